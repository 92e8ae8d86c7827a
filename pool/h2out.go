package pool

import (
	"errors"
	"net"
	"runtime"
	"sync"
	"time"
)

// x/net writes each stream's HEADERS, and each flush of DATA, with a write
// of its own under its connection's write lock, so on a busy conn every
// stream costs a syscall and a TLS record, and streams wait for one
// another's syscalls. The wire queues what x/net writes instead, and one
// goroutine per conn sends everything that queued while its previous write
// was in the kernel: under load, many streams share a syscall; alone, a
// stream pays a goroutine hand-off. An error from the conn is returned by
// every later Write, and the conn is closed so that x/net's reader ends
// the streams in flight.

const (
	// h2OutMaxQueued bounds the bytes queued for the writer: past it Write
	// waits, so a peer that reads slowly slows its writers rather than
	// growing memory. x/net's flow control bounds DATA too; this is the
	// backstop.
	h2OutMaxQueued = 256 << 10
	// h2OutKeepBuffer is the largest queue buffer a conn keeps between
	// writes: an idle conn holds no more than twice this.
	h2OutKeepBuffer = 32 << 10
	// h2CloseFlushWait bounds how long Close waits for queued frames (a
	// GOAWAY) to reach the kernel, as x/net bounds its own close.
	h2CloseFlushWait = 250 * time.Millisecond
	// h2OutYields bounds the times the writer yields before a write while
	// the queue keeps growing: enough for a burst's streams to share a
	// write, few enough that a lone stream hardly waits.
	h2OutYields = 3
)

// h2Out is the write queue of an h2Wire.
type h2Out struct {
	mu      sync.Mutex
	drained sync.Cond // signalled when the writer takes the queue
	queued  []byte
	spare   []byte
	err     error // sticky: the first write error, or net.ErrClosed
	closing bool

	kick chan struct{} // the queue went from empty to not empty
	done chan struct{} // closed when the writer returns
	once sync.Once
}

func (o *h2Out) init() {
	o.drained.L = &o.mu
	o.kick = make(chan struct{}, 1)
	o.done = make(chan struct{})
}

// Write queues p for the conn's writer.
func (w *h2Wire) Write(p []byte) (int, error) {
	o := &w.out
	o.mu.Lock()
	for len(o.queued) >= h2OutMaxQueued && o.err == nil && !o.closing {
		o.drained.Wait()
	}
	switch {
	case o.err != nil:
		err := o.err
		o.mu.Unlock()
		return 0, err
	case o.closing:
		o.mu.Unlock()
		return 0, net.ErrClosed
	}
	first := len(o.queued) == 0
	o.queued = append(o.queued, p...)
	o.mu.Unlock()
	if first {
		select {
		case o.kick <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// Close sends what is queued, waiting at most h2CloseFlushWait, and closes
// the conn.
func (w *h2Wire) Close() error {
	w.out.startClosing()
	t := time.NewTimer(h2CloseFlushWait)
	defer t.Stop()
	select {
	case <-w.out.done:
	case <-t.C:
	}
	if err := w.Conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err // the writer closes the conn as it ends; that is no error
	}
	return nil
}

// closeSoon is Close without the wait: the writer closes the conn once
// what is queued went out (an RST_STREAM or GOAWAY x/net wrote just before
// the pool gave up on the conn), or the timer does.
func (w *h2Wire) closeSoon() {
	w.out.startClosing()
	time.AfterFunc(h2CloseFlushWait, func() { _ = w.Conn.Close() })
}

func (o *h2Out) startClosing() {
	o.once.Do(func() {
		o.mu.Lock()
		o.closing = true
		o.drained.Broadcast()
		o.mu.Unlock()
		select {
		case o.kick <- struct{}{}:
		default:
		}
	})
}

// writeLoop is the conn's writer. It ends when the wire is closed (and
// then closes the conn), when a write fails, or when the read side ends
// (whoever closed the conn).
func (w *h2Wire) writeLoop() {
	o := &w.out
	defer close(o.done)
	for {
		select {
		case <-o.kick:
		case <-w.readEnd:
			o.fail(net.ErrClosed)
			_ = w.Conn.Close()
			return
		}
		// Let the goroutines already runnable queue their frames first
		// (the one that woke the writer has just made others runnable),
		// a few rounds while they keep adding.
		for n, i := o.size(), 0; i < h2OutYields; i++ {
			runtime.Gosched()
			m := o.size()
			if m == n {
				break
			}
			n = m
		}
		for {
			o.mu.Lock()
			b := o.queued
			if len(b) == 0 {
				closing := o.closing
				o.mu.Unlock()
				if closing {
					o.fail(net.ErrClosed)
					_ = w.Conn.Close()
					return
				}
				break
			}
			o.queued = o.spare[:0]
			o.drained.Broadcast()
			o.mu.Unlock()

			err := w.send(b)
			if err != nil {
				o.fail(err)
				_ = w.Conn.Close()
				return
			}
			if cap(b) > h2OutKeepBuffer {
				b = nil
			}
			o.mu.Lock()
			o.spare = b[:0]
			o.mu.Unlock()
		}
	}
}

// send writes b to the conn within the policy's write timeout.
func (w *h2Wire) send(b []byte) error {
	if d := time.Duration(w.writeTimeout.Load()); d > 0 {
		if err := w.Conn.SetWriteDeadline(time.Now().Add(d)); err != nil {
			return err
		}
	}
	n, err := w.Conn.Write(b)
	w.c.bytesWritten.Add(uint64(n))
	return err
}

// size is the number of bytes queued.
func (o *h2Out) size() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.queued)
}

// fail makes err the answer to every later Write.
func (o *h2Out) fail(err error) {
	o.mu.Lock()
	if o.err == nil {
		o.err = err
	}
	o.queued = nil
	o.drained.Broadcast()
	o.mu.Unlock()
}
