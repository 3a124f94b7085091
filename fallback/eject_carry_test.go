package fallback_test

import (
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
)

func TestEjectorCarry(t *testing.T) {
	const base = 10 * time.Second
	now := time.Unix(1000, 0)
	s := fallback.EjectorSettings{ConsecutiveFailures: 3, BaseEjection: base, MaxEjection: time.Minute, MaxEjectedPercent: 50}
	old := fallback.NewEjector(3, s)
	for range 3 {
		old.Report(1, true, now) // endpoint 1 ejected
	}
	old.Report(2, true, now) // endpoint 2 one failure into a run
	old.Report(2, true, now)

	// The set changes: old 2 becomes 0, old 1 becomes 2, 1 is new.
	e := fallback.NewEjector(4, s)
	e.Carry(old, []int{2, -1, 1, 7})
	for _, tc := range []struct {
		name    string
		i       int
		ejected bool
	}{
		{"ejected endpoint stays ejected", 2, true},
		{"new endpoint starts healthy", 1, false},
		{"out of range source ignored", 3, false},
		{"failing endpoint not yet ejected", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := e.Ejected(tc.i, now); got != tc.ejected {
				t.Errorf("Ejected(%d) = %v, want %v", tc.i, got, tc.ejected)
			}
		})
	}
	// The carried failure run goes on: one more failure is the third.
	if d := e.Report(0, true, now); d != base {
		t.Errorf("third failure of a carried run ejected for %v, want %v", d, base)
	}
	// The carried ejection count doubles the next period.
	later := now.Add(base + time.Second)
	e.Report(2, true, later)
	e.Report(2, true, later)
	if d := e.Report(2, true, later); d != 2*base {
		t.Errorf("second ejection after carry lasted %v, want %v", d, 2*base)
	}
	e.Carry(nil, []int{0}) // no previous ejector: nothing to copy
}
