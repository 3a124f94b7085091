package telemetry_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/telemetry"
)

// traceparentRE is a version-00 traceparent whose flags hold only the bits
// W3C Trace Context defines: sampled (0x01) and, from Level 2, random
// (0x02), which the otel propagator keeps from a trusted parent.
var traceparentRE = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]$`)

// FuzzPropagation feeds arbitrary trace context, trace state, baggage and
// B3 headers through a hop and one attempt, trusted and untrusted, and
// checks what the upstream receives: always one well-formed traceparent of
// a valid trace; a valid trusted parent's trace continued; from an
// untrusted caller none of its trace id, tracestate, baggage or B3; and
// baggage, when forwarded, that parses. Malformed input never fails or
// panics.
func FuzzPropagation(f *testing.F) {
	f.Add("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "rojo=00f067aa0ba902b7", "session.id=abc,user=1;p=x", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
	f.Add("00-00000000000000000000000000000000-b7ad6b7169203331-01", "", "a=%ZZ", "")
	f.Add("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x", "k=v;;;", "0")
	f.Add("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", ",,,", "=,=", "garbage")
	f.Add("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", "a=b", "", "")
	// Level 2 random flag, alone and with sampled, and undefined bits.
	f.Add("00-00000000000000000000000000000001-95bcace2f54f08e0-02", "", "", "")
	f.Add("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03", "", "", "")
	f.Add("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff", "", "", "")
	type env struct {
		trust bool
		rt    *telemetry.Route
	}
	var envs []env
	for _, trust := range []bool{true, false} {
		tel, err := telemetry.New(telemetry.Options{
			Config: telemetry.Config{Tracing: telemetry.Tracing{TrustIncoming: &trust,
				Propagators: []string{"tracecontext", "baggage", "b3"}}},
			Registry: prometheus.NewRegistry(),
			Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { tel.Shutdown(context.Background()) })
		envs = append(envs, env{trust, tel.Route(telemetry.RouteInfo{Name: "r", Upstream: "u", Listener: "l"}, nil)})
	}
	tc := propagation.TraceContext{}
	f.Fuzz(func(t *testing.T, traceparent, tracestate, bag, b3 string) {
		in := http.Header{}
		for k, v := range map[string]string{"Traceparent": traceparent, "Tracestate": tracestate, "Baggage": bag, "B3": b3} {
			if v != "" {
				in.Set(k, v)
			}
		}
		incoming := trace.SpanContextFromContext(tc.Extract(context.Background(), propagation.HeaderCarrier(in)))
		for _, e := range envs {
			ctx, hop := e.rt.Start(context.Background(), propagation.HeaderCarrier(in), "c", "GET")
			_, att := hop.Attempt(ctx, "127.0.0.1:80")
			out := in.Clone()
			att.Inject(propagation.HeaderCarrier(out), out.Del)
			att.End("200", telemetry.OutcomeOK)
			hop.End("200", telemetry.OutcomeOK)

			got := out.Values("Traceparent")
			if len(got) != 1 || !traceparentRE.MatchString(got[0]) {
				t.Fatalf("trust=%v: outgoing traceparent %q", e.trust, got)
			}
			sc := trace.SpanContextFromContext(tc.Extract(context.Background(), propagation.HeaderCarrier(out)))
			if !sc.IsValid() {
				t.Fatalf("trust=%v: outgoing traceparent %q is not a valid context", e.trust, got[0])
			}
			switch {
			case e.trust && incoming.IsValid() && b3 == "" && sc.TraceID() != incoming.TraceID():
				// (With B3 too, the propagator listed last decides.)
				t.Fatalf("trusted parent %s not continued: %s", incoming.TraceID(), sc.TraceID())
			case !e.trust && incoming.IsValid() && sc.TraceID() == incoming.TraceID():
				t.Fatal("untrusted caller's trace id forwarded")
			}
			if !e.trust {
				if v := out.Values("Baggage"); len(v) > 0 {
					t.Fatalf("untrusted baggage forwarded: %q", v)
				}
				// B3 is configured, so the proxy writes its own context
				// there; the caller's must not survive.
				if v := out.Get("B3"); b3 != "" && v == b3 {
					t.Fatalf("untrusted b3 forwarded: %q", v)
				}
				if ts := out.Get("Tracestate"); ts != "" && ts == tracestate {
					t.Fatalf("untrusted tracestate forwarded: %q", ts)
				}
			}
			if v := out.Get("Baggage"); v != "" {
				if _, err := baggage.Parse(v); err != nil {
					t.Fatalf("trust=%v: forwarded baggage %q does not parse: %v", e.trust, v, err)
				}
			}
		}
	})
}
