package telemetry

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// ListenerCounts are one listener's connection counters, as the proxy
// keeps them (it counts; this package names and exports).
type ListenerCounts struct {
	Open        int64  // connections open now
	Refused     uint64 // closed at accept: max_connections reached
	ResetFloods uint64 // closed for rapid reset
	FrameFloods uint64 // closed for a flood of frames that do no work
	// TLS certificate reloads after the files changed, by result.
	CertReloads, CertReloadErrors uint64
}

// listenerCollector reads the counters at scrape time, so the accept path
// pays nothing for them.
type listenerCollector struct {
	source atomic.Pointer[func() map[string]ListenerCounts]

	open, refused, floods, frameFloods, certReloads *prometheus.Desc
}

func newListenerCollector(reg prometheus.Registerer) *listenerCollector {
	c := &listenerCollector{
		open: prometheus.NewDesc("hopwatch_listener_connections",
			"Client connections open per listener.", []string{"listener"}, nil),
		refused: prometheus.NewDesc("hopwatch_listener_connections_refused_total",
			"Client connections closed at accept because the listener had max_connections open.", []string{"listener"}, nil),
		floods: prometheus.NewDesc("hopwatch_listener_reset_floods_total",
			"Client connections closed for resetting too many streams prematurely (HTTP/2 rapid reset).", []string{"listener"}, nil),
		frameFloods: prometheus.NewDesc("hopwatch_listener_frame_floods_total",
			"Client connections of gRPC relay listeners closed for sending frames that do no work (PRIORITY, SETTINGS, WINDOW_UPDATE, unknown types, empty DATA) out of proportion to their streams and data.",
			[]string{"listener"}, nil),
		certReloads: prometheus.NewDesc("hopwatch_listener_cert_reloads_total",
			"Reloads of a TLS listener's certificate files after they changed, by result (error: the previous certificate kept serving).",
			[]string{"listener", "result"}, nil),
	}
	reg.MustRegister(c)
	return c
}

func (c *listenerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.open
	ch <- c.refused
	ch <- c.floods
	ch <- c.frameFloods
	ch <- c.certReloads
}

func (c *listenerCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.source.Load()
	if f == nil {
		return
	}
	for name, n := range (*f)() {
		ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(n.Open), name)
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.CounterValue, float64(n.Refused), name)
		ch <- prometheus.MustNewConstMetric(c.floods, prometheus.CounterValue, float64(n.ResetFloods), name)
		ch <- prometheus.MustNewConstMetric(c.frameFloods, prometheus.CounterValue, float64(n.FrameFloods), name)
		if n.CertReloads > 0 || n.CertReloadErrors > 0 {
			ch <- prometheus.MustNewConstMetric(c.certReloads, prometheus.CounterValue, float64(n.CertReloads), name, "ok")
			ch <- prometheus.MustNewConstMetric(c.certReloads, prometheus.CounterValue, float64(n.CertReloadErrors), name, "error")
		}
	}
}

// WatchListeners sets where the listener metrics come from; f is called
// at each scrape and must be safe for concurrent use.
func (t *Telemetry) WatchListeners(f func() map[string]ListenerCounts) {
	if t == nil {
		return
	}
	t.listeners.source.Store(&f)
}
