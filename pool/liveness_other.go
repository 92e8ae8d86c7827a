//go:build !linux

package pool

import "net"

// peekSocket has no portable non-blocking peek to use here, so idle conns
// are assumed alive; a stale one fails its first read and idempotent
// requests are retried on another conn.
func peekSocket(*net.TCPConn) peekResult { return peekEmpty }
