//go:build !race

package pool

// raceEnabled is true when the race detector is on; it allocates on its own
// account, which allocation counts must not be judged by.
const raceEnabled = false
