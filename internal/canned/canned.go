// Package canned is a loopback upstream for allocation tests: it answers
// every request on its one connection with the same bytes, reading and
// writing through fixed buffers, so that it allocates nothing per request
// itself and what a test counts is the client's.
package canned

import (
	"bytes"
	"net"
	"testing"
)

// Upstream starts the upstream, which takes one connection and answers
// each request head (requests must have no body) with response. It stops
// when the test ends. It returns its host:port.
func Upstream(t testing.TB, response string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf, out := make([]byte, 4096), []byte(response)
		var pending []byte
		for {
			n, err := c.Read(buf[len(pending):])
			if err != nil {
				return
			}
			pending = buf[:len(pending)+n]
			for {
				i := bytes.Index(pending, []byte("\r\n\r\n"))
				if i < 0 {
					break
				}
				if _, err := c.Write(out); err != nil {
					return
				}
				pending = pending[:copy(buf, pending[i+4:])]
			}
		}
	}()
	return ln.Addr().String()
}
