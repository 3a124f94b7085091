package demo_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: the
// stack, the gateway's clients and the users must all stop with Close or
// their context.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
