package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is one process the benchmark started.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string        // its standard error
	exited  chan struct{} // closed once it has exited and been reaped
	waitErr error         // why it exited; valid once exited is closed
}

// children owns every process the benchmark starts, so that one call stops
// them all whatever path the run leaves by.
type children struct {
	dir  string // where each child's standard error is logged
	mu   sync.Mutex
	list []*child
}

// start runs bin with args. If stdout is non-nil, it receives the child's
// standard output; otherwise that is discarded.
//
// Each child gets its own process group, so that stopping it also stops
// what it forks (nginx's workers), and a parent-death signal, so that it
// does not outlive a benchmark that is itself killed.
func (cs *children) start(name string, stdout io.Writer, bin string, args ...string) (*child, error) {
	logPath := fmt.Sprintf("%s/%s.log", cs.dir, name)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own copy
	cmd := exec.Command(bin, args...)
	cmd.Stdin = nil
	cmd.Stdout = stdout
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()
	cs.mu.Lock()
	cs.list = append(cs.list, c)
	cs.mu.Unlock()
	return c, nil
}

// startAnnounced runs one of the benchmark's own servers, which listens on
// a free port and prints its address as the first line of standard output,
// and returns that address.
func (cs *children) startAnnounced(ctx context.Context, name, bin string, args ...string) (*child, string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, "", err
	}
	c, err := cs.start(name, w, bin, args...)
	w.Close() // the child has its own copy; ours would keep r from ever ending
	if err != nil {
		r.Close()
		return nil, "", err
	}
	line := make(chan string, 1)
	go func() {
		defer r.Close()
		br := bufio.NewReader(r)
		s, _ := br.ReadString('\n')
		line <- strings.TrimSpace(s)
		// Keep draining, so a chatty child never blocks on a full pipe.
		_, _ = io.Copy(io.Discard, br)
	}()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case addr := <-line:
		if _, _, err := net.SplitHostPort(addr); err != nil {
			c.stop()
			return nil, "", fmt.Errorf("%s printed %q, not an address%s", name, addr, c.logTail())
		}
		return c, addr, nil
	case <-timer.C:
		c.stop()
		return nil, "", fmt.Errorf("%s announced no address within 10s%s", name, c.logTail())
	case <-ctx.Done():
		c.stop()
		return nil, "", ctx.Err()
	}
}

// stopAll stops every child, newest first.
func (cs *children) stopAll() {
	cs.mu.Lock()
	list := cs.list
	cs.list = nil
	cs.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].stop()
	}
}

// stop ends the child's process group: SIGTERM, then SIGKILL for whatever
// is still there a moment later. The group is signalled even after the
// leader exited, since nginx workers may outlive their master.
func (c *child) stop() {
	pgid := c.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(2 * time.Second):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-c.exited:
	case <-time.After(2 * time.Second):
	}
}

// alive reports whether the child has not exited.
func (c *child) alive() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// logTail returns the end of the child's standard error, for an error
// message, or "" if it logged nothing.
func (c *child) logTail() string {
	b, err := os.ReadFile(c.logPath)
	if err != nil || len(b) == 0 {
		return ""
	}
	const keep = 2000
	if len(b) > keep {
		b = b[len(b)-keep:]
	}
	return "\n--- " + c.name + " stderr ---\n" + strings.TrimRight(string(b), "\n")
}

// freePort returns a loopback port nothing listened on a moment ago, for
// programs that cannot report the port they bound. Another process may take
// it first; callers retry with a new one when the program fails to start.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls probe until it succeeds, the child exits, or the time is
// up: a child that dies (port taken, bad flag) fails at once, not after the
// whole timeout.
func waitReady(ctx context.Context, c *child, timeout time.Duration, probe func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for attempt := 0; time.Now().Before(deadline) && attempt < 100000; attempt++ {
		if last = probe(); last == nil {
			return nil
		}
		select {
		case <-c.exited:
			return fmt.Errorf("%s exited before it was ready (%v)%s", c.name, c.waitErr, c.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return errors.Join(fmt.Errorf("%s not ready within %v%s", c.name, timeout, c.logTail()), last)
}
