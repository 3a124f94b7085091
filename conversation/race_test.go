//go:build race

package conversation_test

// raceEnabled: the race detector slows the tracker about tenfold.
const raceEnabled = true
