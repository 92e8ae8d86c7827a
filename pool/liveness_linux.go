//go:build linux

package pool

import (
	"net"
	"syscall"
)

// peekSocket looks at an idle socket without blocking and without
// consuming anything (MSG_PEEK|MSG_DONTWAIT), so a conn the server has
// closed is caught before a request is written to it.
func peekSocket(tc *net.TCPConn) peekResult {
	rc, err := tc.SyscallConn()
	if err != nil {
		return peekReset
	}
	res := peekReset
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				res = peekEmpty
			case err != nil:
				res = peekReset
			case n == 0:
				res = peekEOF
			default:
				res = peekData
			}
			return true // never wait for readability
		}
	})
	if err != nil {
		return peekReset
	}
	return res
}
