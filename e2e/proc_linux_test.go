package e2e

import "syscall"

// childAttr makes the kernel kill a program this test binary started if
// the binary dies without running its cleanups (go test -timeout panics,
// for one), so no Prometheus or Jaeger is left holding ports.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
