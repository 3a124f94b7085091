//go:build unix

package testkit

import (
	"fmt"
	"syscall"
	"testing"
)

// DeadAddr returns a loopback address that refuses connections for as long
// as the test runs, for an upstream that is down. A socket bound there and
// never listening holds the port: the kernel answers a connection with a
// reset, hands the port to no outgoing connection, and lets nobody else
// bind it (the socket does not set SO_REUSEADDR). A port merely found free
// (FreeAddr) is dead only until someone binds it, and the test binaries of
// other packages, running at the same time, bind ports from the same span.
func DeadAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
}
