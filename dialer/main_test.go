package dialer

import (
	"testing"

	"go.uber.org/goleak"
)

// Every dial races goroutines and every test server runs some; none may
// outlive the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
