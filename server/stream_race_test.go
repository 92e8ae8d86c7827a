//go:build race

package server

// raceEnabled is true when the race detector is on; it slows large
// transfers roughly tenfold, so they shrink.
const raceEnabled = true
