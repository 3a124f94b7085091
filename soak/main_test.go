package soak

import (
	"testing"

	"go.uber.org/goleak"
)

// Every server, client and connection of the soak is closed by the test
// that started it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
