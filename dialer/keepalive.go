package dialer

import (
	"net"
	"time"
)

// SetKeepAlive retunes keep-alive on a live socket
// ((*net.TCPConn).SetKeepAliveConfig), so a policy change reaches pooled
// connections without redialing them. As at dial time, cfg.Enable false
// turns the probes off and zero Idle, Interval or Count mean the net
// package's defaults (15s, 15s, 9).
func SetKeepAlive(c *net.TCPConn, cfg net.KeepAliveConfig) error {
	return c.SetKeepAliveConfig(cfg)
}

// netDialer returns the net.Dialer for one dial with keep-alive set as the
// socket is made, so no connection ever runs with the OS defaults.
//
// net.Dialer enables keep-alive with its own defaults unless KeepAlive is
// negative; a negative KeepAlive makes Enable false mean off, matching
// SetKeepAlive.
func netDialer(cfg net.KeepAliveConfig) *net.Dialer {
	nd := &net.Dialer{KeepAliveConfig: cfg}
	if !cfg.Enable {
		nd.KeepAlive = -1 * time.Second
	}
	return nd
}
