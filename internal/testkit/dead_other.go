//go:build !unix

package testkit

import "testing"

// DeadAddr returns a loopback address that refuses connections. Without
// unix sockets to hold the port it is FreeAddr's: dead until someone
// binds it.
func DeadAddr(t testing.TB) string {
	t.Helper()
	return FreeAddr(t)
}
