package pool

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// h2Wire is the net.Conn an HTTP/2 client conn runs on. It counts bytes,
// stamps the last read for the pinger, bounds every write by the policy's
// H2PingTimeout (a peer that stopped reading is as dead as one that stopped
// answering PINGs, and x/net's own check cannot see it) and watches the
// frames the peer sends for the few facts the pool steers by.
type h2Wire struct {
	net.Conn
	c *conn

	lastRead     atomic.Int64 // unix nanoseconds of the last read that returned bytes
	writeTimeout atomic.Int64 // nanoseconds; 0 = none
	frames       h2FrameWatch // read side only: x/net reads from one goroutine

	readEnd chan struct{} // closed when a read fails: the conn is done
	readErr error         // set before readEnd is closed
	endOnce sync.Once

	out h2Out
}

func newH2Wire(c *conn, writeTimeout time.Duration) *h2Wire {
	w := &h2Wire{Conn: c.nc, c: c, readEnd: make(chan struct{})}
	w.lastRead.Store(time.Now().UnixNano())
	w.writeTimeout.Store(int64(writeTimeout))
	w.out.init()
	go w.writeLoop()
	return w
}

func (w *h2Wire) Read(p []byte) (int, error) {
	n, err := w.Conn.Read(p)
	if n > 0 {
		w.lastRead.Store(time.Now().UnixNano())
		w.c.bytesRead.Add(uint64(n))
		w.frames.scan(p[:n], w.c)
	}
	if err != nil {
		w.endOnce.Do(func() { w.readErr = err; close(w.readEnd) })
	}
	return n, err
}

// HTTP/2 frame types and the one setting the watcher reads (RFC 9113
// sections 6 and 6.5.2).
const (
	h2FrameSettings      = 0x4
	h2FrameGoAway        = 0x7
	h2FlagAck            = 0x1
	h2SettingMaxStreams  = 0x3
	h2FrameHeaderLen     = 9
	h2GoAwayPrefixLen    = 8
	h2SettingEntryLength = 6
)

// h2FrameWatch follows the frame boundaries of the bytes the peer sends,
// after the 9-byte frame headers, and keeps what it learns from SETTINGS
// and GOAWAY frames in the conn's atomics. x/net parses and checks the
// same bytes; this only reads, so a frame it cannot make sense of is
// x/net's to reject, and the watcher never fails anything.
type h2FrameWatch struct {
	hdr   [h2FrameHeaderLen]byte
	nhdr  int    // bytes of hdr filled
	left  uint32 // payload bytes of the current frame still to come
	typ   byte
	flags byte
	keep  [h2GoAwayPrefixLen]byte // the start of a GOAWAY payload, or one SETTINGS entry
	nkeep int
	// settingsSeen says the first SETTINGS came and h2Settings is closed.
	settingsSeen bool
}

func (f *h2FrameWatch) scan(p []byte, c *conn) {
	for len(p) > 0 {
		if f.left == 0 && f.nhdr < h2FrameHeaderLen {
			k := copy(f.hdr[f.nhdr:], p)
			f.nhdr += k
			p = p[k:]
			if f.nhdr < h2FrameHeaderLen {
				return
			}
			f.left = uint32(f.hdr[0])<<16 | uint32(f.hdr[1])<<8 | uint32(f.hdr[2])
			f.typ, f.flags, f.nkeep = f.hdr[3], f.hdr[4], 0
			if f.left == 0 {
				f.frameDone(c)
			}
			continue
		}
		k := uint32(len(p))
		if k > f.left {
			k = f.left
		}
		f.payload(p[:k], c)
		p = p[k:]
		f.left -= k
		if f.left == 0 {
			f.frameDone(c)
		}
	}
}

// payload takes the next bytes of the current frame's payload.
func (f *h2FrameWatch) payload(p []byte, c *conn) {
	switch {
	case f.typ == h2FrameGoAway:
		if f.nkeep < h2GoAwayPrefixLen {
			f.nkeep += copy(f.keep[f.nkeep:], p)
		}
	case f.typ == h2FrameSettings && f.flags&h2FlagAck == 0:
		for len(p) > 0 {
			k := copy(f.keep[f.nkeep:h2SettingEntryLength], p)
			f.nkeep += k
			p = p[k:]
			if f.nkeep == h2SettingEntryLength {
				f.nkeep = 0
				if binary.BigEndian.Uint16(f.keep[:2]) == h2SettingMaxStreams {
					c.h2PeerMax.Store(uint64(binary.BigEndian.Uint32(f.keep[2:6])) | h2PeerMaxSeen)
				}
			}
		}
	}
}

func (f *h2FrameWatch) frameDone(c *conn) {
	switch {
	case f.typ == h2FrameGoAway && f.nkeep == h2GoAwayPrefixLen:
		code := binary.BigEndian.Uint32(f.keep[4:8])
		c.h2GoAway.Store(uint64(code) | h2GoAwaySeen)
		c.h2Notify()
	case f.typ == h2FrameSettings && f.flags&h2FlagAck == 0:
		if c.h2PeerMax.Load()&h2PeerMaxSeen == 0 {
			// SETTINGS without the entry: the limit is unbounded; the
			// pool takes x/net's default, as x/net does.
			c.h2PeerMax.Store(h2DefaultPeerMax | h2PeerMaxSeen)
		}
		if !f.settingsSeen {
			f.settingsSeen = true
			close(c.h2Settings)
		}
		c.h2Notify()
	}
	f.nhdr, f.nkeep = 0, 0
}

const (
	// h2PeerMaxSeen marks h2PeerMax as set by the peer's SETTINGS.
	h2PeerMaxSeen = 1 << 32
	// h2GoAwaySeen marks h2GoAway as holding a received GOAWAY's code.
	h2GoAwaySeen = 1 << 32
	// h2DefaultPeerMax is the limit taken from SETTINGS that set none, as
	// x/net does.
	h2DefaultPeerMax = 1000
)
