package pool

import (
	"encoding/binary"
	"testing"
)

// FuzzH2FrameWatch feeds the frame watcher what a peer could send, cut at
// arbitrary points: it must never panic, and what it learns must not
// depend on how the bytes were split into reads.
func FuzzH2FrameWatch(f *testing.F) {
	frame := func(typ, flags byte, payload []byte) []byte {
		h := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
		return append(h, payload...)
	}
	settings := make([]byte, 12)
	binary.BigEndian.PutUint16(settings[0:], 0x1)
	binary.BigEndian.PutUint32(settings[2:], 4096)
	binary.BigEndian.PutUint16(settings[6:], h2SettingMaxStreams)
	binary.BigEndian.PutUint32(settings[8:], 10)
	goAway := make([]byte, 12)
	binary.BigEndian.PutUint32(goAway[0:], 5)
	binary.BigEndian.PutUint32(goAway[4:], 0)
	seed := append(frame(h2FrameSettings, 0, settings), frame(0x0, 0x1, []byte("hello"))...)
	seed = append(seed, frame(h2FrameGoAway, 0, goAway)...)
	f.Add(seed, uint8(3))
	f.Add([]byte("HTTP/1.1 200 OK\r\n\r\n"), uint8(1))
	f.Add(frame(h2FrameSettings, h2FlagAck, nil), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		// A conn still dialing: what the watcher learns is stored, and
		// the pool is told nothing.
		hp := &hostPool{e: &Engine{}}
		whole := &conn{hp: hp, state: ConnDialing, h2Settings: make(chan struct{})}
		var w1 h2FrameWatch
		w1.scan(data, whole)
		cut := &conn{hp: hp, state: ConnDialing, h2Settings: make(chan struct{})}
		var w2 h2FrameWatch
		n := int(step) + 1
		for p := data; len(p) > 0; {
			k := min(n, len(p))
			w2.scan(p[:k], cut)
			p = p[k:]
		}
		if whole.h2PeerMax.Load() != cut.h2PeerMax.Load() || whole.h2GoAway.Load() != cut.h2GoAway.Load() {
			t.Fatalf("split reads changed what was learned: %x/%x vs %x/%x",
				whole.h2PeerMax.Load(), whole.h2GoAway.Load(), cut.h2PeerMax.Load(), cut.h2GoAway.Load())
		}
	})
}
