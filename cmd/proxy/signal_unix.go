//go:build unix

package main

import (
	"os"
	"syscall"
)

// reopenSignal reopens the access log file, as logrotate's postrotate
// expects (nginx, Envoy and Traefik use SIGUSR1 the same way).
var reopenSignal os.Signal = syscall.SIGUSR1
