package telemetry

import "github.com/prometheus/client_golang/prometheus"

// Replay buffers: what routes with a retry or fallback policy keep of a
// request so that it can be sent again (proxy/ decides; fallback.Memory
// keeps the budget; these are its metrics).

// replayMetrics are the series of the replay budget.
type replayMetrics struct {
	bytes   prometheus.Gauge
	skipped *prometheus.CounterVec
}

func newReplayMetrics(reg prometheus.Registerer) replayMetrics {
	m := replayMetrics{
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_replay_buffer_bytes",
			Help: "Request bytes held in memory for retries and fallbacks, all routes together (bounded by replay.max_bytes).",
		}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_replay_skipped_total",
			Help: "Requests on retry/fallback routes forwarded as a stream without replay, by reason (too_large, unknown_length, budget).",
		}, []string{"route", "reason"}),
	}
	reg.MustRegister(m.bytes, m.skipped)
	return m
}

// Replay skip reasons.
const (
	ReplayTooLarge      = "too_large"      // over replay.max_request_bytes
	ReplayUnknownLength = "unknown_length" // an HTTP body without Content-Length
	ReplayBudget        = "budget"         // replay.max_bytes in use by other requests
)

// ReplayBytes exports the bytes held by the replay budget now.
func (t *Telemetry) ReplayBytes(used int64) {
	if t == nil {
		return
	}
	t.replay.bytes.Set(float64(used))
}

// ReplaySkipped counts a request of the route that went without replay.
func (r *Route) ReplaySkipped(reason string) {
	if r == nil {
		return
	}
	r.t.replay.skipped.WithLabelValues(r.info.Name, reason).Inc()
}
