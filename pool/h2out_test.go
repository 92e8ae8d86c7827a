package pool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// wirePair is an h2Wire on one end of a loopback TCP conn and the raw
// other end.
func wirePair(t *testing.T, writeTimeout time.Duration) (*h2Wire, *countingConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	cc := &countingConn{Conn: nc}
	w := newH2Wire(&conn{nc: cc}, writeTimeout)
	t.Cleanup(func() {
		_ = w.Close()
		_ = peer.Close()
		<-w.out.done
	})
	return w, cc, peer
}

// Concurrent writers each write numbered records; the peer must get every
// record whole, each writer's in order, and the overlapping writers share
// socket writes.
func TestH2WireSendsEveryWriteWholeAndInOrder(t *testing.T) {
	const writers, records = 8, 500
	w, cc, peer := wirePair(t, 10*time.Second)

	got := make(chan error, 1)
	go func() {
		br := bufio.NewReader(peer)
		next := make([]uint32, writers)
		for range writers * records {
			var rec [12]byte
			if _, err := io.ReadFull(br, rec[:]); err != nil {
				got <- err
				return
			}
			id, seq := binary.BigEndian.Uint32(rec[:4]), binary.BigEndian.Uint32(rec[4:8])
			if id >= writers || seq != next[id] || binary.BigEndian.Uint32(rec[8:]) != id^seq {
				got <- errors.New("a record came torn or out of order")
				return
			}
			next[id]++
		}
		got <- nil
	}()

	var wg sync.WaitGroup
	for id := range uint32(writers) {
		wg.Go(func() {
			for seq := range uint32(records) {
				var rec [12]byte
				binary.BigEndian.PutUint32(rec[:4], id)
				binary.BigEndian.PutUint32(rec[4:8], seq)
				binary.BigEndian.PutUint32(rec[8:], id^seq)
				if n, err := w.Write(rec[:]); n != len(rec) || err != nil {
					t.Errorf("Write = %d, %v", n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d records in %d socket writes", writers*records, cc.writes.Load())
	// Alone, each record would be a write of its own; overlapping, most
	// share one (a few dozen writes in all, in practice).
	if n := cc.writes.Load(); n > writers*records/2 {
		t.Errorf("%d socket writes for %d records: the writers hardly shared them", n, writers*records)
	}
	if w.c.bytesWritten.Load() != writers*records*12 {
		t.Errorf("bytesWritten = %d, want %d", w.c.bytesWritten.Load(), writers*records*12)
	}
}

// What is queued when the wire is closed (a GOAWAY) still goes out.
func TestH2WireCloseSendsWhatIsQueued(t *testing.T) {
	w, _, peer := wirePair(t, 10*time.Second)
	want := make([]byte, 100<<10)
	for i := range want {
		want[i] = byte(i)
	}
	if _, err := w.Write(want); err != nil {
		t.Fatal(err)
	}
	done := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		done <- b
	}()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-done; len(b) != len(want) {
		t.Fatalf("peer read %d bytes before EOF, want %d", len(b), len(want))
	}
	if _, err := w.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}
}

// A peer that stops reading fails the writes within the write timeout,
// writers blocked on a full queue included, and the failure sticks.
func TestH2WireWriteTimeoutFailsEveryWriter(t *testing.T) {
	const writers = 4
	w, _, _ := wirePair(t, 50*time.Millisecond)
	errs := make(chan error, writers)
	for range writers {
		go func() {
			chunk := make([]byte, 64<<10)
			var err error
			for range 10000 { // far more than the socket buffers and the queue hold
				if _, err = w.Write(chunk); err != nil {
					break
				}
			}
			errs <- err
		}()
	}
	for range writers {
		err := <-errs
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("Write = %v, want a timeout once the peer stopped reading", err)
		}
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("a Write after the failure succeeded")
	}
	<-w.out.done
}

// The writer ends with the read side: whoever closed the conn, no
// goroutine is left behind.
func TestH2WireWriterEndsWithTheReadSide(t *testing.T) {
	w, cc, peer := wirePair(t, 10*time.Second)
	_ = peer.Close()
	if _, err := w.Read(make([]byte, 10)); err == nil {
		t.Fatal("Read on a conn the peer closed succeeded")
	}
	<-w.out.done
	if _, err := cc.Conn.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the socket after the writer ended: Write = %v, want net.ErrClosed", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("Close after the writer closed the socket = %v, want nil", err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("Write after the read side ended succeeded")
	}
}
