package testkit

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
)

// FreePort returns a loopback TCP port that is free now, for a
// configuration that must name a port before the program under test binds
// it (a listener added by a reload, an outside program's config file).
//
// It picks below the kernel's ephemeral range on purpose. A port from
// "127.0.0.1:0" lies inside that range, and once the probe closes it the
// kernel may hand it to any process's next outgoing connection; with the
// packages' tests running side by side and opening thousands of
// connections, the program then fails to bind the port now and then (seen
// in CI as a reload that never succeeded). Below the range only an
// explicit bind can take a port. Ports are not handed out twice in one
// test binary.
func FreePort(t testing.TB) int {
	t.Helper()
	lo, hi := portRange()
	portsMu.Lock()
	defer portsMu.Unlock()
	for i := 0; hi-lo >= 100 && i < 200; i++ {
		p := lo + rand.IntN(hi-lo)
		if portsGiven[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // in use
		}
		ln.Close()
		portsGiven[p] = true
		return p
	}
	// Nothing free below the range (or no room for one): fall back to the
	// kernel's choice.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// FreeAddr is FreePort as "127.0.0.1:port".
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// portRange is the span FreePort draws from: up to 12,000 ports just
// below the ephemeral range's start, never below 10,000 (well-known and
// registered services cluster lower). An empty or tiny span (a range that
// starts low) makes FreePort use the kernel's choice.
func portRange() (lo, hi int) {
	start := 32768 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var a, z int
		if n, _ := fmt.Sscan(string(b), &a, &z); n == 2 && a > 0 {
			start = a
		}
	}
	return max(10000, start-12000), start
}
