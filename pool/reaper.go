package pool

import "time"

// reap closes idle conns past their idle timeout or lifetime. One
// goroutine per engine, on a ticker: no timer per conn, and checkout
// applies the same rules so a conn is never used late between sweeps.
func (e *Engine) reap() {
	defer e.wg.Done()
	t := time.NewTicker(e.sweep)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
			now := e.now()
			for _, hp := range e.hostList() {
				hp.sweep(now)
			}
		}
	}
}
