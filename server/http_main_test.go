package server

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine running: every
// stream, body pump and upstream must end with the call that started it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
