package pool

import "time"

// reap closes idle conns past their idle timeout or lifetime and removes
// host pools unused for IdleHostTimeout. One goroutine per engine, on a
// ticker: no timer per conn, and checkout applies the same rules so a
// conn is never used late between sweeps.
func (e *Engine) reap() {
	defer e.wg.Done()
	t := time.NewTicker(e.sweep)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
			e.sweepOnce(e.now())
		}
	}
}

// sweepOnce is one pass of the sweeper over the live pools.
func (e *Engine) sweepOnce(now time.Time) {
	var idle []*hostPool
	for _, hp := range e.pools() {
		if hp.sweep(now, e.idleHost) {
			idle = append(idle, hp)
		}
	}
	n := e.removeIdleHosts(idle)
	if e.afterSweep != nil {
		e.afterSweep(n)
	}
}
