package e2e

import (
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/telemetry"
)

const installJaeger = "(cd tools/jaeger && go build -o ../../bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger), as .ci/run does"

// TestJaegerTrace sends turns with a known trace ID through the chain,
// with hopwatch exporting to a real Jaeger v2 over OTLP gRPC and OTLP
// HTTP, and reads each trace back from Jaeger's query API: six spans (a
// server and a client span per hop), linked as the hops were made.
func TestJaegerTrace(t *testing.T) {
	bin := needProgram(t, installJaeger, os.Getenv("HOPWATCH_JAEGER"), "../bin/jaeger", "jaeger")
	// "jaeger version" is empty in a plain go build; the module version is
	// in the binary's build information.
	if bi, err := buildinfo.ReadFile(bin); err == nil {
		t.Logf("using %s %s (%s)", bi.Main.Path, bi.Main.Version, bi.GoVersion)
	}
	j := startJaeger(t, bin)
	for _, tc := range []struct{ protocol, endpoint string }{
		{"grpc", j.otlpGRPC},
		{"http", j.otlpHTTP},
	} {
		t.Run("otlp "+tc.protocol, func(t *testing.T) {
			t.Parallel()
			c := startChain(t, telemetry.Config{Tracing: telemetry.Tracing{
				OTLP: &telemetry.OTLP{Endpoint: tc.endpoint, Protocol: tc.protocol},
			}})
			ctx := context.Background()
			type sent struct {
				trace  trace.TraceID
				parent trace.SpanID // the client's own span, outside hopwatch
			}
			var turns []sent
			for range 3 {
				s := sent{trace: randomTraceID(), parent: randomSpanID()}
				if err := c.turn(ctx, fmt.Sprintf("00-%s-%s-01", s.trace, s.parent)); err != nil {
					t.Fatal(err)
				}
				turns = append(turns, s)
			}
			for _, s := range turns {
				spans := j.waitTrace(t, s.trace, 2*len(chainHops))
				checkJaegerTrace(t, spans, s.parent)

				// hopwatch's built-in store saw the same spans.
				var stored storedTrace
				if err := getJSON(ctx, c.adminURL+"/api/traces/"+s.trace.String(), &stored); err != nil {
					t.Fatal(err)
				}
				var inStore, inJaeger []string
				for _, sp := range stored.Spans {
					inStore = append(inStore, sp.SpanID)
				}
				for _, sp := range spans {
					inJaeger = append(inJaeger, sp.SpanID)
				}
				sort.Strings(inStore)
				sort.Strings(inJaeger)
				if strings.Join(inStore, " ") != strings.Join(inJaeger, " ") {
					t.Errorf("trace %s: span IDs in hopwatch's store %v, in Jaeger %v", s.trace, inStore, inJaeger)
				}
			}
		})
	}
}

// TestOTLPCollectorDown points the exporter at a port nobody listens on,
// with a tiny queue: every turn must still succeed, and the loss must show
// in hopwatch's own metrics. It needs no outside program.
func TestOTLPCollectorDown(t *testing.T) {
	for _, protocol := range []string{"grpc", "http"} {
		t.Run("otlp "+protocol, func(t *testing.T) {
			t.Parallel()
			c := startChain(t, telemetry.Config{Tracing: telemetry.Tracing{
				OTLP: &telemetry.OTLP{Endpoint: loopback(testkit.FreePort(t)), Protocol: protocol, QueueSize: 4, Timeout: 2 * time.Second},
			}})
			// Each turn bounds itself (10 s); a turn held up by the dead
			// collector fails here rather than hanging the test.
			const turns = 30
			ok := 0
			for range turns {
				if err := c.turn(context.Background(), ""); err != nil {
					t.Error(err)
					continue
				}
				ok++
			}
			if ok != turns {
				t.Fatalf("%d of %d turns succeeded with the collector down", ok, turns)
			}
			eventually(t, 30*time.Second, "lost spans counted", nil, func() error {
				dropped := c.counter(t, "hopwatch_spans_dropped_total")
				failed := c.counter(t, "hopwatch_span_export_failures_total")
				if dropped+failed == 0 {
					return errors.New("hopwatch_spans_dropped_total and hopwatch_span_export_failures_total are both 0")
				}
				t.Logf("%d turns ok; spans dropped %v, failed export calls %v", ok, dropped, failed)
				return nil
			})
			if n := c.counter(t, "hopwatch_spans_exported_total"); n != 0 {
				t.Errorf("hopwatch_spans_exported_total = %v with no collector", n)
			}
		})
	}
}

// jaeger is a Jaeger v2 (all-in-one, in-memory storage) on ports of our
// choosing.
type jaeger struct {
	otlpGRPC, otlpHTTP string // receiver addresses
	query              string // query API base URL
	proc               *process
}

func startJaeger(t *testing.T, bin string) *jaeger {
	t.Helper()
	otlpGRPC, otlpHTTP := loopback(testkit.FreePort(t)), loopback(testkit.FreePort(t))
	queryHTTP, queryGRPC, health := loopback(testkit.FreePort(t)), loopback(testkit.FreePort(t)), loopback(testkit.FreePort(t))
	// The configuration users deploy (deploy/jaeger/config.yaml: OTLP in,
	// memory limiter, batch, memory storage, query API out), as it is;
	// only its ports move to free loopback ones and its own metrics
	// (default :8888) go off, with --set, so parallel runs do not clash.
	path, err := filepath.Abs(filepath.Join("..", "deploy", "jaeger", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--config", "file:" + path}
	for _, kv := range []string{
		"receivers.otlp.protocols.grpc.endpoint=" + otlpGRPC,
		"receivers.otlp.protocols.http.endpoint=" + otlpHTTP,
		"extensions.jaeger_query.http.endpoint=" + queryHTTP,
		"extensions.jaeger_query.grpc.endpoint=" + queryGRPC,
		"extensions.healthcheckv2.http.endpoint=" + health,
		"service.telemetry.metrics.level=none",
		"service.telemetry.logs.level=warn",
	} {
		args = append(args, "--set="+kv)
	}
	j := &jaeger{otlpGRPC: otlpGRPC, otlpHTTP: otlpHTTP, query: "http://" + queryHTTP}
	j.proc = startProcess(t, bin, args...)
	eventually(t, 60*time.Second, "jaeger ready", j.proc, func() error {
		for _, a := range []string{otlpGRPC, otlpHTTP} {
			if err := dialable(a); err != nil {
				return err
			}
		}
		var services any
		return getJSON(context.Background(), j.query+"/api/services", &services)
	})
	return j
}

// jaegerSpan is a span in Jaeger's query API JSON (/api/traces/{id}).
type jaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	ProcessID string `json:"processID"`
	Tags      []struct {
		Key   string          `json:"key"`
		Value json.RawMessage `json:"value"`
	} `json:"tags"`

	service string // from the trace's processes
}

// tag is a tag's value as text ("" if absent).
func (s *jaegerSpan) tag(key string) string {
	for _, t := range s.Tags {
		if t.Key == key {
			var str string
			if json.Unmarshal(t.Value, &str) == nil {
				return str
			}
			return string(t.Value)
		}
	}
	return ""
}

// parent is the CHILD_OF reference ("" if none).
func (s *jaegerSpan) parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// waitTrace polls Jaeger until the trace has want spans. hopwatch's span
// exporter sends every 5 s (or per 512 spans), so this takes a few seconds.
func (j *jaeger) waitTrace(t *testing.T, id trace.TraceID, want int) []*jaegerSpan {
	t.Helper()
	var spans []*jaegerSpan
	eventually(t, 60*time.Second, fmt.Sprintf("trace %s in jaeger with %d spans", id, want), j.proc, func() error {
		var res struct {
			Data []struct {
				Spans     []*jaegerSpan `json:"spans"`
				Processes map[string]struct {
					ServiceName string `json:"serviceName"`
				} `json:"processes"`
			} `json:"data"`
		}
		if err := getJSON(context.Background(), j.query+"/api/traces/"+id.String(), &res); err != nil {
			return err
		}
		spans = nil
		for _, d := range res.Data {
			for _, s := range d.Spans {
				s.service = d.Processes[s.ProcessID].ServiceName
				spans = append(spans, s)
			}
		}
		if len(spans) < want {
			return fmt.Errorf("%d spans so far", len(spans))
		}
		return nil
	})
	if len(spans) != want {
		t.Fatalf("trace %s: %d spans in Jaeger, want %d", id, len(spans), want)
	}
	return spans
}

// checkJaegerTrace checks one turn's trace: per hop a server span and a
// client span of service hopwatch with the hop's attributes; each client
// span the child of its hop's server span; chat's server span the child of
// the client's span (clientParent); nlu's and kb's server spans children
// of chat's client span, whose context hopwatch gave the gateway.
func checkJaegerTrace(t *testing.T, spans []*jaegerSpan, clientParent trace.SpanID) {
	t.Helper()
	type pair struct{ server, client *jaegerSpan }
	hops := map[string]*pair{}
	for _, s := range spans {
		if s.service != "hopwatch" {
			t.Errorf("span %s (%s): service %q, want hopwatch", s.SpanID, s.OperationName, s.service)
		}
		r := s.tag("hopwatch.route")
		if hops[r] == nil {
			hops[r] = &pair{}
		}
		switch kind := s.tag("span.kind"); kind {
		case "server":
			if hops[r].server != nil {
				t.Errorf("route %q: two server spans", r)
			}
			hops[r].server = s
		case "client":
			if hops[r].client != nil {
				t.Errorf("route %q: two client spans", r)
			}
			hops[r].client = s
		default:
			t.Errorf("span %s (%s): span.kind %q", s.SpanID, s.OperationName, kind)
		}
	}
	for _, h := range chainHops {
		p := hops[h.route]
		if p == nil || p.server == nil || p.client == nil {
			t.Errorf("route %q: want a server and a client span, got %+v", h.route, p)
			continue
		}
		if got := p.client.parent(); got != p.server.SpanID {
			t.Errorf("route %q: client span's parent %q, want its server span %q", h.route, got, p.server.SpanID)
		}
		want := map[string]string{
			"hopwatch.route":    h.route,
			"hopwatch.upstream": h.upstream,
			"hopwatch.caller":   h.caller,
			"hopwatch.outcome":  "ok",
		}
		if h.route == "nlu" {
			want["rpc.system"] = "grpc"
			want["rpc.grpc.status_code"] = "0"
		} else {
			want["http.response.status_code"] = "200"
		}
		for k, v := range want {
			for _, s := range []*jaegerSpan{p.server, p.client} {
				if got := s.tag(k); got != v {
					t.Errorf("route %q %s span: %s = %q, want %q", h.route, s.tag("span.kind"), k, got, v)
				}
			}
		}
		server := map[string]string{}
		if h.route == "nlu" {
			server["rpc.service"], server["rpc.method"] = "grpc.health.v1.Health", "Check"
		} else {
			server["http.request.method"] = http.MethodPost
		}
		for k, v := range server {
			if got := p.server.tag(k); got != v {
				t.Errorf("route %q server span: %s = %q, want %q", h.route, k, got, v)
			}
		}
		if got := p.client.tag("hopwatch.attempt"); got != "1" {
			t.Errorf("route %q client span: hopwatch.attempt = %q, want 1", h.route, got)
		}
		if got := p.client.tag("server.address"); got != "127.0.0.1" {
			t.Errorf("route %q client span: server.address = %q, want 127.0.0.1", h.route, got)
		}
	}
	if t.Failed() {
		return
	}
	var shape []string
	for _, h := range chainHops {
		p := hops[h.route]
		shape = append(shape, fmt.Sprintf("%s: server %s ← %s, client %s ← %s",
			h.route, p.server.SpanID, p.server.parent(), p.client.SpanID, p.client.parent()))
	}
	t.Logf("trace %s:\n  %s", spans[0].TraceID, strings.Join(shape, "\n  "))
	chatClient := hops["chat"].client.SpanID
	checks := []struct {
		span *jaegerSpan
		want string
		what string
	}{
		{hops["chat"].server, clientParent.String(), "the client's span (its traceparent)"},
		{hops["nlu"].server, chatClient, "chat's client span (the traceparent the gateway got)"},
		{hops["kb"].server, chatClient, "chat's client span (the traceparent the gateway got)"},
	}
	for _, c := range checks {
		if got := c.span.parent(); got != c.want {
			t.Errorf("%s server span: parent %q, want %s %q", c.span.tag("hopwatch.route"), got, c.what, c.want)
		}
	}
}

// randomTraceID has a non-zero high half: Jaeger prints 64-bit IDs short.
func randomTraceID() trace.TraceID {
	var id trace.TraceID
	for id[0] == 0 {
		for i := range id {
			id[i] = byte(rand.Uint32())
		}
	}
	return id
}

func randomSpanID() trace.SpanID {
	var id trace.SpanID
	for !id.IsValid() {
		for i := range id {
			id[i] = byte(rand.Uint32())
		}
	}
	return id
}
