package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	pooldv1 "github.com/poold/poold/gen/poold/v1"
)

// 64 concurrent Do calls of 16 MiB bodies against a 256 MiB budget: the
// bodies that fit are returned whole, the others fail with OVERLOADED, and
// the daemon's peak memory stays within the budget plus a fixed margin
// rather than 64 × 16 MiB.
func TestBufferedBodiesStayWithinTheByteBudget(t *testing.T) {
	const (
		calls  = 64
		size   = 16 << 20
		budget = 256 << 20
		margin = 320 << 20 // the copies gRPC marshals into, and the runtime
	)
	body := strings.Repeat("b", size)
	var arrived atomic.Int64
	allIn := make(chan struct{})
	var once sync.Once
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == calls {
			once.Do(func() { close(allIn) })
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		// Hold every body until all calls are in, or a call poold refused
		// before sending leaves us waiting: then they overlap for sure.
		select {
		case <-allIn:
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	defer upstream.Close()

	bin := buildPoold(t)
	cmd, addr := startPooldBinary(t, bin, "--egress-allow=127.0.0.1/32", "--shutdown-delay=0s",
		"--max-buffered-bytes=256MiB", "--max-body-size=16MiB")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pooldv1.NewHTTPServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var ok, overloaded atomic.Int64
	var wg sync.WaitGroup
	for range calls {
		wg.Go(func() {
			resp, err := client.Do(ctx, &pooldv1.DoRequest{Url: upstream.URL})
			switch code, reason := errorInfoReason(err); {
			case err == nil && len(resp.GetBody()) == size:
				ok.Add(1)
			case code == codes.ResourceExhausted && reason == "OVERLOADED":
				overloaded.Add(1)
			default:
				t.Errorf("Do = %d bytes, %v; want the whole body or OVERLOADED", len(resp.GetBody()), err)
			}
		})
	}
	wg.Wait()
	if ok.Load() == 0 || overloaded.Load() == 0 {
		t.Errorf("%d calls succeeded and %d were OVERLOADED; want some of each", ok.Load(), overloaded.Load())
	}
	peak := peakRSS(t, cmd.Process.Pid)
	t.Logf("%d whole bodies, %d OVERLOADED; poold's peak RSS %d MiB", ok.Load(), overloaded.Load(), peak>>20)
	if peak > budget+margin {
		t.Errorf("poold's peak RSS %d MiB, want at most the %d MiB budget + %d MiB", peak>>20, budget>>20, margin>>20)
	}
}

// peakRSS reads a process's high-water resident set size (VmHWM).
func peakRSS(t *testing.T, pid int) int64 { return procMemory(t, pid, "VmHWM") }

// procMemory reads one kB figure of /proc/PID/status, in bytes.
func procMemory(t *testing.T, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc to read memory from: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, found := strings.CutPrefix(sc.Text(), field+":"); found {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s %q: %v", field, rest, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/PID/status", field)
	return 0
}
