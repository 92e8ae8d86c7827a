package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// startPoold builds and runs the daemon on loopback ports with an admin
// token file, and returns its gRPC address and that file.
func startPoold(t *testing.T) (addr, tokenFile string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "poold")
	build := exec.Command("go", "build", "-o", bin, "../poold")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("building poold: %v", err)
	}
	tokenFile = filepath.Join(dir, "admin")
	if err := os.WriteFile(tokenFile, []byte("ops:admin-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--listen=127.0.0.1:0", "--http-listen=127.0.0.1:0", "--log-format=json",
		"--egress-allow=127.0.0.1/32", "--shutdown-delay=0s", "--admin-token-file="+tokenFile)
	cmd.Env = []string{}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stderr)
	for addr == "" && sc.Scan() {
		var line struct{ Msg, GRPC string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "poold listening" {
			addr = line.GRPC
		}
	}
	if addr == "" {
		t.Fatal("poold never reported listening")
	}
	go io.Copy(io.Discard, stderr)
	return addr, tokenFile
}

// poolctl runs the CLI in process and returns its exit status and output.
func poolctl(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, func(k string) string { return env[k] }, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestPoolctlAgainstARealDaemon(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer up.Close()
	upHost := strings.TrimPrefix(up.URL, "http://")
	addr, tokens := startPoold(t)
	env := map[string]string{"POOLCTL_ADDR": addr, "POOLCTL_TOKEN_FILE": tokens}

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 2 {
		if _, err := pooldv1.NewHTTPServiceClient(conn).Do(ctx, &pooldv1.DoRequest{Url: up.URL}); err != nil {
			t.Fatal(err)
		}
	}

	code, out, errOut := poolctl(t, env, "hosts")
	if code != exitOK || !strings.Contains(out, "http://"+upHost) || !strings.Contains(out, "REUSE") || !strings.Contains(out, "50%") {
		t.Errorf("hosts = %d\n%s%s; want a row for the upstream, 2 requests, 50%% reused", code, out, errOut)
	}
	code, out, _ = poolctl(t, env, "hosts", "-o", "json")
	var hosts map[string]any
	if code != exitOK || json.Unmarshal([]byte(out), &hosts) != nil || hosts["hosts"] == nil {
		t.Errorf("hosts -o json = %d %q; want JSON with hosts", code, out)
	}
	if code, out, _ = poolctl(t, env, "conns", upHost); code != exitOK || !strings.Contains(out, "idle") ||
		!strings.Contains(out, "PROTO") || !strings.Contains(out, "HTTP/1.1") {
		t.Errorf("conns = %d\n%s; want the idle HTTP/1.1 connection", code, out)
	}

	// events follows WatchEvents; the policy change below is its event.
	events := make(chan string, 1)
	go func() {
		_, out, errOut := poolctl(t, env, "events", "--kind", "policy_changed", "--count", "1")
		events <- out + errOut
	}()
	code, out, errOut = poolctl(t, env, "policy", "set", "default", "idle_conn_timeout=45s", "tcp_keepalive.idle=20s")
	if code != exitOK || !strings.Contains(out, "45s") {
		t.Errorf("policy set = %d\n%s%s; want the policy with idle_conn_timeout 45s", code, out, errOut)
	}
	// The watch may have started after that change: change again until it
	// reports one.
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case got := <-events:
			if !strings.Contains(got, "policy_changed") {
				t.Errorf("events printed %q, want a policy_changed event", got)
			}
			break wait
		case <-tick.C:
			poolctl(t, env, "policy", "set", "default", "max_retries=1")
		case <-deadline:
			t.Error("events printed no policy change within 20s")
			break wait
		}
	}
	code, out, errOut = poolctl(t, env, "policy", "set", upHost, "protocols=http1", "max_concurrent_streams=50", "h2_ping_timeout=5s")
	if code != exitOK || !regexp.MustCompile(`(?m)^protocols\s+http1$`).MatchString(out) || !strings.Contains(out, "max_concurrent_streams") {
		t.Errorf("policy set of the HTTP/2 fields = %d\n%s%s; want protocols shown as http1", code, out, errOut)
	}
	if code, _, errOut = poolctl(t, env, "policy", "set", upHost, "protocols=unspecified"); code != exitUsage || !strings.Contains(errOut, "protocols") {
		t.Errorf("policy set protocols=unspecified = %d %q; want the call refused naming protocols", code, errOut)
	}
	if code, out, _ = poolctl(t, env, "effective", upHost); code != exitOK || !strings.Contains(out, "45s") {
		t.Errorf("effective = %d\n%s; want idle_conn_timeout 45s in force", code, out)
	}
	code, _, errOut = poolctl(t, env, "policy", "set", "default", "max_retries=2", "--etag", "1-stale")
	if code != exitConflict || !strings.Contains(errOut, "changed since it was read") {
		t.Errorf("policy set with a stale etag = %d %q; want exit %d and the conflict explained", code, errOut, exitConflict)
	}
	if code, _, errOut = poolctl(t, env, "policy", "set", "default", "idle_conn_timout=1s"); code != exitUsage || !strings.Contains(errOut, "idle_conn_timout") {
		t.Errorf("policy set with a misspelt field = %d %q; want exit %d naming it", code, errOut, exitUsage)
	}
	if code, out, _ = poolctl(t, env, "drain", upHost); code != exitOK || !strings.Contains(out, "closed 1 idle") {
		t.Errorf("drain = %d %q; want its idle connection closed", code, out)
	}
	if code, _, _ = poolctl(t, env, "policy", "get", "api.nowhere.example"); code != exitNotFound {
		t.Errorf("policy get of a missing policy = %d, want %d", code, exitNotFound)
	}
	if code, _, _ = poolctl(t, map[string]string{"POOLCTL_ADDR": addr}, "hosts"); code != exitAccess {
		t.Errorf("hosts without the admin token = %d, want %d", code, exitAccess)
	}
	for _, bad := range [][]string{{"hostz"}, {}, {"drain"}, {"hosts", "--no-such-flag"}, {"policy", "set", "default", "idle_conn_timeout"}} {
		if code, _, errOut := poolctl(t, env, bad...); code != exitUsage {
			t.Errorf("poolctl %q = %d (%s), want %d", bad, code, errOut, exitUsage)
		}
	}
}

func TestPolicySetTakesAnEnumByItsShortOrFullName(t *testing.T) {
	tests := []struct {
		arg  string
		want pooldv1.Protocols
	}{
		{"protocols=h2", pooldv1.Protocols_PROTOCOLS_H2},
		{"protocols=h2_preferred", pooldv1.Protocols_PROTOCOLS_H2_PREFERRED},
		{"protocols=HTTP1", pooldv1.Protocols_PROTOCOLS_HTTP1},
		{"protocols=PROTOCOLS_H2C", pooldv1.Protocols_PROTOCOLS_H2C},
	}
	for _, tt := range tests {
		p, paths, err := parseAssignments("policies/default", []string{tt.arg})
		if err != nil {
			t.Errorf("%s: %v", tt.arg, err)
			continue
		}
		if p.Protocols == nil || *p.Protocols != tt.want || len(paths) != 1 || paths[0] != "protocols" {
			t.Errorf("%s = %v %v, want protocols %v", tt.arg, p.Protocols, paths, tt.want)
		}
	}
	if _, _, err := parseAssignments("policies/default", []string{"protocols=spdy"}); err == nil || !strings.Contains(err.Error(), "spdy") {
		t.Errorf("protocols=spdy = %v, want a usage error naming the value", err)
	}
}

func TestPolicyTablesShowAnEnumByTheNameSetTakes(t *testing.T) {
	h2 := pooldv1.Protocols_PROTOCOLS_H2_PREFERRED
	var b strings.Builder
	writePolicy(&b, &pooldv1.Policy{Name: "policies/default", Protocols: &h2})
	if !strings.Contains(b.String(), "protocols\th2_preferred\n") {
		t.Errorf("writePolicy = %q, want protocols h2_preferred", b.String())
	}
}

func TestTheStreamsColumnShowsHTTP2LoadAgainstItsLimit(t *testing.T) {
	tests := []struct {
		name string
		in   *pooldv1.Connection
		want string
	}{
		{"HTTP/1.1 has no streams", &pooldv1.Connection{Protocol: "HTTP/1.1", ActiveStreams: 1}, "-"},
		{"dialing has no protocol yet", &pooldv1.Connection{}, "-"},
		{"HTTP/2 before the upstream's SETTINGS", &pooldv1.Connection{Protocol: "HTTP/2.0", ActiveStreams: 1}, "1/?"},
		{"HTTP/2 under its limit", &pooldv1.Connection{Protocol: "HTTP/2.0", ActiveStreams: 7, MaxStreams: 100}, "7/100"},
		{"HTTP/2 at its limit with waiters", &pooldv1.Connection{Protocol: "HTTP/2.0", ActiveStreams: 100, MaxStreams: 100, PendingStreams: 3}, "100/100+3"},
	}
	for _, tt := range tests {
		if got := streams(tt.in); got != tt.want {
			t.Errorf("%s: streams = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestEveryEventKindIsAcceptedByKind(t *testing.T) {
	kinds := eventKinds()
	for _, want := range []string{"dialed", "events_dropped", "goaway", "ping_failed", "refused_stream"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("eventKinds() = %v, want %q among them", kinds, want)
		}
	}
	if len(kinds) != len(pooldv1.EventKind_name)-1 {
		t.Errorf("eventKinds() = %v, want every kind but UNSPECIFIED", kinds)
	}
}
