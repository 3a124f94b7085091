//go:build !linux

package e2e

import "syscall"

// childAttr: only Linux has a parent-death signal; elsewhere the test's
// cleanup is the only thing that stops the programs it started.
func childAttr() *syscall.SysProcAttr { return nil }
