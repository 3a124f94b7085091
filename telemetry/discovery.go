package telemetry

import "github.com/prometheus/client_golang/prometheus"

// DNS discovery: proxy/ re-resolves upstreams with DNS endpoints and
// reports each resolution here.

// discoveryMetrics are the series of DNS discovery.
type discoveryMetrics struct {
	resolutions *prometheus.CounterVec
	endpoints   *prometheus.GaugeVec
}

func newDiscoveryMetrics(reg prometheus.Registerer) discoveryMetrics {
	m := discoveryMetrics{
		resolutions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_dns_resolutions_total",
			Help: "DNS discovery lookups of upstream endpoint names, by result (ok, error); an error keeps the last good addresses.",
		}, []string{"upstream", "result"}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopwatch_dns_endpoints",
			Help: "Addresses the DNS endpoints of an upstream resolve to now (last good answers).",
		}, []string{"upstream"}),
	}
	reg.MustRegister(m.resolutions, m.endpoints)
	return m
}

// DNSResolution counts one lookup of one of the upstream's names.
func (t *Telemetry) DNSResolution(upstream string, ok bool) {
	if t == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "error"
	}
	t.disc.resolutions.WithLabelValues(upstream, result).Inc()
}

// DNSEndpoints exports how many addresses the upstream's DNS endpoints
// resolve to.
func (t *Telemetry) DNSEndpoints(upstream string, n int) {
	if t == nil {
		return
	}
	t.disc.endpoints.WithLabelValues(upstream).Set(float64(n))
}

// DNSForget drops the series of an upstream that no longer has DNS
// endpoints, so that a removed upstream does not show stale addresses.
func (t *Telemetry) DNSForget(upstream string) {
	if t == nil {
		return
	}
	t.disc.endpoints.DeleteLabelValues(upstream)
}
