//go:build !unix

package main

import "os"

// reopenSignal: no SIGUSR1 here; the access log is reopened on restart.
var reopenSignal os.Signal
