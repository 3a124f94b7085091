package demo_test

import (
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/demo"
)

func TestRecorder(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name          string
		turns         []demo.Turn
		p50, p95, p99 time.Duration
		errors, slow  int
	}{
		{name: "empty"},
		{
			name:  "one turn reads back as itself",
			turns: []demo.Turn{{Latency: 437 * ms, Outcome: demo.OutcomeOK}},
			p50:   437 * ms, p95: 437 * ms, p99: 437 * ms,
		},
		{
			name: "tail",
			turns: func() []demo.Turn {
				var ts []demo.Turn
				for range 95 {
					ts = append(ts, demo.Turn{Latency: 400 * ms, Outcome: demo.OutcomeOK})
				}
				for range 5 {
					ts = append(ts, demo.Turn{Latency: 2500 * ms, Outcome: demo.OutcomeOK, Slow: true})
				}
				return ts
			}(),
			p50: 400 * ms, p95: 400 * ms, p99: 2500 * ms, slow: 5,
		},
		{
			name: "canceled turns are not counted",
			turns: []demo.Turn{
				{Latency: 100 * ms, Outcome: demo.OutcomeError},
				{Latency: 9 * time.Second, Outcome: demo.OutcomeCanceled},
			},
			p50: 100 * ms, p95: 100 * ms, p99: 100 * ms, errors: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(0, 0)
			rec := demo.NewRecorder(func() time.Time { return now })
			for _, turn := range tt.turns {
				rec.Record(turn)
			}
			now = now.Add(10 * time.Second)
			s := rec.Total()
			// Percentiles are bucketed: within 2%.
			for _, c := range []struct {
				name      string
				got, want time.Duration
			}{{"p50", s.P50, tt.p50}, {"p95", s.P95, tt.p95}, {"p99", s.P99, tt.p99}} {
				if diff := c.got - c.want; diff < -c.want/50 || diff > c.want/50 {
					t.Errorf("%s = %v, want %v ±2%%", c.name, c.got, c.want)
				}
			}
			if s.Errors != tt.errors || s.Slow != tt.slow {
				t.Errorf("errors %d slow %d, want %d %d", s.Errors, s.Slow, tt.errors, tt.slow)
			}
			if s.Span != 10*time.Second {
				t.Errorf("span %v", s.Span)
			}
		})
	}
}

func TestRecorderWindow(t *testing.T) {
	now := time.Unix(0, 0)
	rec := demo.NewRecorder(func() time.Time { return now })
	rec.Record(demo.Turn{Latency: time.Second, Outcome: demo.OutcomeOK})
	now = now.Add(5 * time.Second)
	if w := rec.Window(); w.Turns != 1 || w.Rate() != 0.2 {
		t.Errorf("first window %+v rate %v", w, w.Rate())
	}
	rec.Record(demo.Turn{Latency: time.Second, Outcome: demo.OutcomeOK})
	rec.Record(demo.Turn{Latency: time.Second, Outcome: demo.OutcomeOK})
	now = now.Add(time.Second)
	if w := rec.Window(); w.Turns != 2 || w.Span != time.Second {
		t.Errorf("second window %+v", w)
	}
	if tot := rec.Total(); tot.Turns != 3 || tot.Span != 6*time.Second {
		t.Errorf("total %+v", tot)
	}
}
