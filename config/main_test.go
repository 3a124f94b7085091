package config_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind; the
// watcher owns fsnotify's reader goroutine and must stop it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
