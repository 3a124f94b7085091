package testkit_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/internal/testkit"
)

func TestMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total", Help: "c"}, []string{"route", "result"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g", Help: "g"})
	reg.MustRegister(c, g)
	c.WithLabelValues("kb", "ok").Add(2)
	c.WithLabelValues("kb", "error").Add(3)
	c.WithLabelValues("nlu", "ok").Add(5)
	g.Set(7)
	for _, tc := range []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"all series", "c_total", nil, 10},
		{"one label", "c_total", map[string]string{"route": "kb"}, 5},
		{"two labels", "c_total", map[string]string{"route": "kb", "result": "ok"}, 2},
		{"a label no series has", "c_total", map[string]string{"upstream": "kb"}, 0},
		{"a gauge", "g", nil, 7},
		{"absent", "nothing", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := testkit.Metric(t, reg, tc.metric, tc.labels); got != tc.want {
				t.Errorf("Metric = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestIDs(t *testing.T) {
	if testkit.TraceID(1) == testkit.TraceID(2) || !testkit.TraceID(0).IsValid() || !testkit.SpanID(1).IsValid() {
		t.Error("ids must be distinct and valid")
	}
}
