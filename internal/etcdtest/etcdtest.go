// Package etcdtest runs a real etcd cluster on loopback for tests: three
// members of the etcd server scripts/tools.sh builds into .tools/bin/etcd
// (or $POOLD_ETCD), each with its data in the test's temporary directory,
// stopped when the test ends.
//
// The server is pinned to v3.7.3, the version of the client poold links
// (go.etcd.io/etcd/client/v3), so that what the tests exercise — watch
// progress, compaction, losing and regaining quorum — is what that client
// is written against. Debian's etcd-server is 3.4.23: out of upstream
// support and three minors behind the client.
//
//	c := etcdtest.Start(t, 3)
//	client := c.Client(t)
//	c.Kill(0) // one member down, the cluster still has quorum
package etcdtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Binary returns the etcd server to run: $POOLD_ETCD, else the repository's
// .tools/bin/etcd. Without one the test is skipped, but fails under CI=true,
// where scripts/tools.sh must have built it.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("POOLD_ETCD"); p != "" {
		return p
	}
	if root, err := repoRoot(); err == nil {
		p := filepath.Join(root, ".tools", "bin", "etcd")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("etcd not found at .tools/bin/etcd or $POOLD_ETCD: scripts/tools.sh builds it")
	}
	t.Skip("etcd not found at .tools/bin/etcd or $POOLD_ETCD; run scripts/tools.sh")
	return ""
}

// repoRoot is the nearest directory up from here holding poold's go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/poold/poold\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no poold go.mod above the working directory")
		}
		dir = parent
	}
}

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	members []*member
}

type member struct {
	name, clientURL, peerURL, dataDir string
	args                              []string

	mu  sync.Mutex // guards cmd
	cmd *exec.Cmd  // nil while the member is down
	log *lockedBuffer
}

// Start runs an n-member cluster and waits until every member is healthy.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, bin: Binary(t)}
	var initial []string
	ports := &portPicker{t: t}
	for i := range n {
		m := &member{
			name:      fmt.Sprintf("m%d", i),
			clientURL: "http://" + ports.addr(),
			peerURL:   "http://" + ports.addr(),
			dataDir:   filepath.Join(t.TempDir(), "etcd"),
			log:       &lockedBuffer{},
		}
		initial = append(initial, m.name+"="+m.peerURL)
		c.members = append(c.members, m)
	}
	token := fmt.Sprintf("poold-test-%d", time.Now().UnixNano())
	for _, m := range c.members {
		m.args = []string{
			"--name=" + m.name,
			"--data-dir=" + m.dataDir,
			"--listen-client-urls=" + m.clientURL,
			"--advertise-client-urls=" + m.clientURL,
			"--listen-peer-urls=" + m.peerURL,
			"--initial-advertise-peer-urls=" + m.peerURL,
			"--initial-cluster=" + strings.Join(initial, ","),
			"--initial-cluster-state=new",
			"--initial-cluster-token=" + token,
			"--log-level=error",
			// A tenth of the defaults: losing a leader on loopback is
			// then a matter of a quarter second, not of the tests' time.
			"--heartbeat-interval=25",
			"--election-timeout=250",
		}
	}
	t.Cleanup(c.stop)
	ports.release()
	for i := range c.members {
		c.startMember(i)
	}
	for i := range c.members {
		c.WaitHealthy(i)
	}
	return c
}

// portPicker hands out loopback addresses no one listens on. It holds
// each one's listener until release, so the kernel cannot give the same
// port twice to one cluster (which etcd refuses as a duplicate URL).
type portPicker struct {
	t   testing.TB
	lns []net.Listener
}

func (p *portPicker) addr() string {
	p.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		p.t.Fatal(err)
	}
	p.lns = append(p.lns, l)
	return l.Addr().String()
}

// release closes the listeners, for the members to bind the ports.
func (p *portPicker) release() {
	for _, l := range p.lns {
		l.Close()
	}
	p.lns = nil
}

func (c *Cluster) startMember(i int) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return
	}
	cmd := exec.Command(c.bin, m.args...)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("starting etcd member %s: %v", m.name, err)
	}
	m.cmd = cmd
}

// Endpoints returns every member's client address, host:port.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, strings.TrimPrefix(m.clientURL, "http://"))
	}
	return out
}

// Client returns a client of the whole cluster, closed when the test ends.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// Kill stops member i at once, as a crash would.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	_ = m.cmd.Wait()
	m.cmd = nil
}

// Restart starts a killed member again on its data. It does not wait:
// alone, a member cannot answer until a quorum is back (WaitHealthy).
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.startMember(i)
}

// WaitHealthy waits until member i answers a linearizable read.
func (c *Cluster) WaitHealthy(i int) {
	c.t.Helper()
	m := c.members[i]
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{strings.TrimPrefix(m.clientURL, "http://")},
		DialTimeout: time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		c.t.Fatal(err)
	}
	defer client.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.Get(ctx, "health")
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("etcd member %s not healthy after 30s: %v\n%s", m.name, err, m.log.tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) stop() {
	for i := range c.members {
		c.Kill(i)
	}
	if c.t.Failed() {
		for _, m := range c.members {
			if tail := m.log.tail(); tail != "" {
				c.t.Logf("etcd member %s log:\n%s", m.name, tail)
			}
		}
	}
}

// lockedBuffer collects a member's output for when a test fails.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// tail returns the last lines written.
func (b *lockedBuffer) tail() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(b.b.Bytes()))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}
