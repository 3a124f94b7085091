package e2e

import (
	"testing"

	"go.uber.org/goleak"
)

// Every subprocess is waited for and every server, client connection and
// telemetry pipeline is shut down by the test that started it; goleak holds
// the package to that.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
