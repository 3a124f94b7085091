package proxy

import (
	"net/http"
	"net/textproto"

	"go.opentelemetry.io/otel/propagation"
)

// headerCarrier is propagation.HeaderCarrier without its per-request
// allocations. Propagators name their fields in lowercase ("traceparent";
// field names are case-insensitive, RFC 9110 §5.1) and http.Header
// canonicalizes every key it is given, building a new string for each
// lowercase one on every Get, Set and Del: on the HTTP path that was ~10
// allocations per request between extracting the caller's context,
// dropping stale fields and injecting ours. The fields of the propagators
// hopwatch knows are canonicalized here without allocating; any other key
// goes through textproto as before.
type headerCarrier http.Header

var (
	_ propagation.TextMapCarrier = headerCarrier{}
	_ propagation.ValuesGetter   = headerCarrier{} // baggage reads every baggage field
)

// canonicalField is textproto.CanonicalMIMEHeaderKey(k), free for the
// propagation fields of W3C Trace Context, W3C Baggage and B3.
func canonicalField(k string) string {
	switch k {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	case "baggage":
		return "Baggage"
	case "b3":
		return "B3"
	case "x-b3-traceid":
		return "X-B3-Traceid"
	case "x-b3-spanid":
		return "X-B3-Spanid"
	case "x-b3-sampled":
		return "X-B3-Sampled"
	case "x-b3-flags":
		return "X-B3-Flags"
	case "x-b3-parentspanid":
		return "X-B3-Parentspanid"
	}
	return textproto.CanonicalMIMEHeaderKey(k)
}

func (h headerCarrier) Get(key string) string {
	if v := h[canonicalField(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (h headerCarrier) Values(key string) []string { return h[canonicalField(key)] }

func (h headerCarrier) Set(key, value string) { h[canonicalField(key)] = []string{value} }

func (h headerCarrier) Keys() []string { return propagation.HeaderCarrier(h).Keys() }

func (h headerCarrier) del(key string) { delete(h, canonicalField(key)) }
