package proxy

import (
	"net/http"
	"slices"
	"testing"

	"go.opentelemetry.io/otel/propagation"
)

// TestHeaderCarrier: headerCarrier reads and writes exactly what
// propagation.HeaderCarrier does, for the propagation fields it
// canonicalizes itself and for any other key.
func TestHeaderCarrier(t *testing.T) {
	keys := []string{"traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid",
		"x-b3-sampled", "x-b3-flags", "x-b3-parentspanid", "x-session-id", "Traceparent", "X-B3-TRACEID", "weird key"}
	in := func() http.Header {
		return http.Header{
			"Traceparent":       {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
			"Tracestate":        {"a=1"},
			"Baggage":           {"k1=v1", "k2=v2"},
			"B3":                {"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"},
			"X-B3-Traceid":      {"463ac35c9f6413ad"},
			"X-B3-Parentspanid": {"0020000000000001"},
			"X-Session-Id":      {"s-1"},
		}
	}
	for _, k := range keys {
		t.Run(k, func(t *testing.T) {
			want, got := propagation.HeaderCarrier(in()), headerCarrier(in())
			if g, w := got.Get(k), want.Get(k); g != w {
				t.Errorf("Get = %q, want %q", g, w)
			}
			if g, w := got.Values(k), want.Values(k); !slices.Equal(g, w) {
				t.Errorf("Values = %q, want %q", g, w)
			}
			got.Set(k, "x")
			want.Set(k, "x")
			if !equalHeader(http.Header(got), http.Header(want)) {
				t.Errorf("after Set: %v, want %v", got, want)
			}
			got.del(k)
			http.Header(want).Del(k)
			if !equalHeader(http.Header(got), http.Header(want)) {
				t.Errorf("after del: %v, want %v", got, want)
			}
			g, w := got.Keys(), want.Keys()
			slices.Sort(g)
			slices.Sort(w)
			if !slices.Equal(g, w) {
				t.Errorf("Keys = %v, want %v", g, w)
			}
		})
	}
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// TestHeaderCarrierAllocs: reading and dropping a propagation field costs
// no allocation, setting one only its value slice (http.Header's own
// carrier builds a canonical key string for each of them).
func TestHeaderCarrierAllocs(t *testing.T) {
	h := headerCarrier(http.Header{"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}})
	tests := []struct {
		name string
		f    func()
		want float64
	}{
		{name: "get", f: func() { h.Get("traceparent"); h.Get("tracestate"); h.Values("baggage") }, want: 0},
		{name: "del", f: func() { h.del("tracestate"); h.del("b3"); h.del("x-b3-parentspanid") }, want: 0},
		{name: "set", f: func() { h.Set("traceparent", "v") }, want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := testing.AllocsPerRun(100, tc.f); got != tc.want {
				t.Fatalf("%v allocations, want %v", got, tc.want)
			}
		})
	}
}
