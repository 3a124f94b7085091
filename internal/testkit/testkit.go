package testkit

import (
	"encoding/binary"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// WaitFor polls cond until it holds, or fails the test after 15 s. It is
// for waiting on real time (a server starting, a breaker's open timeout, a
// background task), never for asserting speed: machines running the tests
// are shared and slow ones must still pass.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Logger sends warnings and errors of the code under test to the test's
// log until the test ends (a log line after that would panic in t.Log);
// routine lines are dropped so that failures stay readable.
func Logger(t testing.TB) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex // guards done, and serializes t.Log
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(p))
	}
	return len(p), nil
}

// Discard is a logger that writes nothing.
func Discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TraceID returns the trace id numbered n: valid (never all zero) and easy
// to read in a failure message (…00000000000000n).
func TraceID(n uint64) trace.TraceID {
	var id trace.TraceID
	binary.BigEndian.PutUint64(id[8:], n)
	id[0] = 0xab
	return id
}

// SpanID returns the span id numbered n.
func SpanID(n uint64) trace.SpanID {
	var id trace.SpanID
	binary.BigEndian.PutUint64(id[:], n)
	return id
}

// Metric sums the counter and gauge series called name whose labels
// include every pair of labels (nil: all series), as gathered from g now.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k {
						found = l.GetValue() == v
						break
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// Millis is n milliseconds, for tables of span timings.
func Millis(n int) time.Duration { return time.Duration(n) * time.Millisecond }
