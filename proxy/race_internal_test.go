//go:build race

package proxy

// raceEnabled: under the race detector sync.Pool drops items at random, so
// allocation counts of pooled paths are not meaningful.
const raceEnabled = true
