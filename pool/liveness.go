package pool

// peekResult is what a non-blocking peek found on an idle socket.
type peekResult int

const (
	peekEmpty peekResult = iota // nothing to read: the conn looks alive
	peekEOF                     // the server closed its side
	peekReset                   // the socket has an error, such as a reset
	peekData                    // bytes arrived that nobody asked for
)
