package e2e

import (
	"testing"

	"go.uber.org/goleak"
)

// Every process, server and client is stopped by the test that started it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
