package pool_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/poold/poold/pool"
)

// startNginx runs a real nginx on a loopback port with the given http-block
// directives and a location answering "ok". Tests skip without nginx, except
// in CI, where scripts/deps.sh installs it and its absence is a failure.
func startNginx(t *testing.T, directives string) string {
	t.Helper()
	return startNginxServer(t, nginxBinary(t), t.TempDir(), directives, nginxServer{})
}

// nginxBinary finds nginx, or skips or fails the test as startNginx says.
func nginxBinary(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, statErr := os.Stat("/usr/sbin/nginx"); statErr == nil {
			bin = "/usr/sbin/nginx"
		} else if os.Getenv("CI") != "" {
			t.Fatal("nginx not installed; scripts/deps.sh installs it")
		} else {
			t.Skip("nginx not installed; run scripts/deps.sh")
		}
	}
	return bin
}

// nginxServer is what a server block adds to the plain HTTP one.
type nginxServer struct {
	listen     string // parameters after the listen address, e.g. "ssl"
	directives string // more directives inside the server block
}

// startNginxServer runs nginx from bin with its files in dir, the given
// http-block directives and one server as srv describes, and returns the
// address it listens on once it accepts connections.
func startNginxServer(t *testing.T, bin, dir, directives string, srv nginxServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	conf := fmt.Sprintf(`
daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  %[2]s
  server {
    listen %[3]s %[4]s;
    %[5]s
    location / { return 200 "ok\n"; }
  }
}
`, dir, directives, addr, srv.listen, srv.directives)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", confPath)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited: %v\n%s", err, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx not accepting on %s within 10s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(client *http.Client, url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		return fmt.Errorf("got %d %q", resp.StatusCode, body)
	}
	return nil
}

// nginx closes a connection after its third request and after a second
// idle: the pool must absorb both without a single caller-visible error.
func TestNginxClosingConnectionsOftenCausesNoCallerVisibleError(t *testing.T) {
	addr := startNginx(t, "keepalive_requests 3;\n  keepalive_timeout 1s;")
	engine, err := pool.New(pool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	client := &http.Client{Transport: engine, Timeout: 10 * time.Second}
	url := "http://" + addr + "/"

	for i := range 2000 {
		if err := get(client, url); err != nil {
			t.Fatalf("sequential GET %d: %v", i, err)
		}
	}

	var wg sync.WaitGroup
	errs := make(chan error, 200)
	start := make(chan struct{})
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs <- get(client, url)
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent GET: %v", err)
		}
	}

	h, ok := engine.Host(addr)
	if !ok {
		t.Fatal("no host stats for nginx")
	}
	if h.Counters.Requests != 2200 {
		t.Errorf("requests = %d, want 2200", h.Counters.Requests)
	}
	// Every third request ends its connection: at least 2000/3 of the
	// sequential ones alone.
	if n := h.Counters.Closed[pool.CloseServerClosed]; n < 2000/3 {
		t.Errorf("closed[server_closed] = %d, want at least %d; closes: %v", n, 2000/3, h.Counters.Closed)
	}
	if h.Counters.Errors != 0 {
		t.Errorf("errors = %d, want 0", h.Counters.Errors)
	}
}
