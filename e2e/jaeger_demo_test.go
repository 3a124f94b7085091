package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/demo"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/telemetry"
)

// TestJaegerDemoTrace runs the demo bot, whose services trace themselves
// with otelgrpc and otelhttp, behind hopwatch, everyone exporting to a real
// Jaeger v2 over OTLP. Each turn is one connected trace in Jaeger: the
// services' spans and hopwatch's interleaved (every hopwatch attempt is
// the parent of the called service's server span, every inner hop the
// child of its caller's own client span), with no parent missing but the
// client's. And hopwatch's built-in store, which saw none of the services'
// spans, stitched each inner hop under the very attempt that Jaeger shows
// above it.
func TestJaegerDemoTrace(t *testing.T) {
	bin := needProgram(t, installJaeger, os.Getenv("HOPWATCH_JAEGER"), "../bin/jaeger", "jaeger")
	j := startJaeger(t, bin)
	d := startDemo(t, j.otlpGRPC)

	type sent struct {
		trace  trace.TraceID
		parent trace.SpanID
	}
	var turns []sent
	for i := range 3 {
		s := sent{trace: randomTraceID(), parent: randomSpanID()}
		d.turn(t, fmt.Sprintf("00-%s-%s-01", s.trace, s.parent), fmt.Sprintf("s-%d", i))
		turns = append(turns, s)
	}
	for _, s := range turns {
		stored, ok := d.tel.Store.Trace(s.trace)
		if !ok {
			t.Fatalf("trace %s not in hopwatch's store", s.trace)
		}
		spans := j.waitConnected(t, s.trace, s.parent, stored)
		checkInterleaved(t, spans, s.parent, stored)
	}
}

type demoRun struct {
	tel     *telemetry.Telemetry
	chatURL string
	client  *http.Client
}

// startDemo runs the demo stack behind an in-process hopwatch, the
// services and hopwatch exporting to the OTLP/gRPC collector at otlp.
func startDemo(t *testing.T, otlp string) *demoRun {
	t.Helper()
	stack, err := demo.Start(demo.Config{Tokens: 3, OTLP: otlp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := stack.Close(ctx); err != nil {
			t.Errorf("demo close: %v", err)
		}
	})
	cfg, err := stack.HopwatchConfig(demo.Placement{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0", OTLP: otlp})
	if err != nil {
		t.Fatal(err)
	}
	log := testkit.Logger(t)
	tel, err := telemetry.New(telemetry.Options{Config: cfg.Telemetry, Registry: prometheus.NewRegistry(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := tel.Shutdown(ctx); err != nil {
			t.Errorf("hopwatch span export at shutdown: %v", err)
		}
	})
	p := proxy.New(proxy.Options{Logger: log, Telemetry: tel, DrainTimeout: 5 * time.Second})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	if err := p.Apply(&cfg.Spec); err != nil {
		t.Fatal(err)
	}
	via := demo.Listeners{GRPC: p.Addr(demo.ListenerGRPC).String(), HTTP: p.Addr(demo.ListenerHTTP).String()}
	if err := stack.ServeGateway(via); err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &demoRun{tel: tel, chatURL: "http://" + via.HTTP + demo.ChatPath, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
}

// turn sends one chat turn as a user whose own span (traceparent) called
// the bot.
func (d *demoRun) turn(t *testing.T, traceparent, session string) {
	t.Helper()
	body, _ := json.Marshal(demo.ChatRequest{Text: "where is my order?"})
	req, _ := http.NewRequest(http.MethodPost, d.chatURL, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(demo.HeaderCaller, "client")
	req.Header.Set(demo.HeaderSession, session)
	req.Header.Set("traceparent", traceparent)
	res, err := d.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("turn: %s: %s", res.Status, b)
	}
}

// jaegerTrace fetches a trace's spans from Jaeger's query API.
func (j *jaeger) jaegerTrace(id trace.TraceID) ([]*jaegerSpan, error) {
	var res struct {
		Data []struct {
			Spans     []*jaegerSpan `json:"spans"`
			Processes map[string]struct {
				ServiceName string `json:"serviceName"`
			} `json:"processes"`
		} `json:"data"`
	}
	if err := getJSON(context.Background(), j.query+"/api/traces/"+id.String(), &res); err != nil {
		return nil, err
	}
	var spans []*jaegerSpan
	for _, d := range res.Data {
		for _, s := range d.Spans {
			s.service = d.Processes[s.ProcessID].ServiceName
			spans = append(spans, s)
		}
	}
	return spans, nil
}

// waitConnected polls Jaeger until the trace holds every span of hopwatch's
// store and no span misses its parent but the one under the client's span:
// the services and hopwatch export on their own schedules.
func (j *jaeger) waitConnected(t *testing.T, id trace.TraceID, clientParent trace.SpanID, stored telemetry.TraceDetail) []*jaegerSpan {
	t.Helper()
	var spans []*jaegerSpan
	eventually(t, 60*time.Second, fmt.Sprintf("trace %s connected in jaeger", id), j.proc, func() error {
		var err error
		if spans, err = j.jaegerTrace(id); err != nil {
			return err
		}
		byID := map[string]*jaegerSpan{}
		for _, s := range spans {
			byID[s.SpanID] = s
		}
		for _, n := range stored.Spans {
			if byID[n.SpanID.String()] == nil {
				return fmt.Errorf("hopwatch's %s span %s (%s) not in jaeger yet (%d spans)", n.Kind, n.SpanID, n.Route, len(spans))
			}
		}
		var orphans []string
		for _, s := range spans {
			if p := s.parent(); p != clientParent.String() && byID[p] == nil {
				orphans = append(orphans, fmt.Sprintf("%s %q of %s (parent %q)", s.SpanID, s.OperationName, s.service, p))
			}
		}
		if len(orphans) > 0 {
			return fmt.Errorf("spans whose parent is not in the trace yet: %s", strings.Join(orphans, "; "))
		}
		return nil
	})
	return spans
}

// checkInterleaved checks the shape of one demo turn in Jaeger against
// hopwatch's spans and its stitched store.
func checkInterleaved(t *testing.T, spans []*jaegerSpan, clientParent trace.SpanID, stored telemetry.TraceDetail) {
	t.Helper()
	byID := map[string]*jaegerSpan{}
	services := map[string]int{}
	for _, s := range spans {
		byID[s.SpanID] = s
		services[s.service]++
	}
	// Every demo service that took part sent its own spans.
	for _, svc := range []string{"gateway", "nlu", "dm", "inference", "llm"} {
		if services[svc] == 0 {
			t.Errorf("no spans of service %s in jaeger (services: %v)", svc, services)
		}
	}
	roots := 0
	for _, s := range spans {
		if s.parent() == clientParent.String() {
			roots++
			if s.service != "hopwatch" || s.tag("hopwatch.route") != "chat" || s.tag("span.kind") != "server" {
				t.Errorf("the span under the client's is %s %q of %s, want hopwatch's chat server span", s.SpanID, s.OperationName, s.service)
			}
		}
	}
	if roots != 1 {
		t.Errorf("%d spans under the client's span, want 1", roots)
	}
	for _, s := range spans {
		if s.service != "hopwatch" {
			continue
		}
		switch s.tag("span.kind") {
		case "client":
			// The attempt carries the request into the upstream service:
			// its server span is the attempt's child.
			up := s.tag("hopwatch.upstream")
			if up == "kb" || up == "llm" || up == "gateway" || up == "nlu" || up == "dm" || up == "inference" {
				found := false
				for _, c := range spans {
					if c.parent() == s.SpanID && c.service == up && c.tag("span.kind") == "server" {
						found = true
					}
				}
				if !found {
					t.Errorf("hopwatch attempt %s to %s: no server span of %s under it", s.SpanID, up, up)
				}
			}
		case "server":
			caller := s.tag("hopwatch.caller")
			if caller == "client" {
				continue
			}
			// An inner hop is the child of its caller's own client span,
			// and above that, through the caller's spans, is the hopwatch
			// attempt that carried the request into the caller: the one
			// hopwatch's store stitched the hop to.
			p := byID[s.parent()]
			if p == nil || p.service != caller || p.tag("span.kind") != "client" {
				t.Errorf("hop %s (%s): parent %v, want a client span of %s", s.SpanID, s.tag("hopwatch.route"), p, caller)
				continue
			}
			for p != nil && p.service != "hopwatch" {
				p = byID[p.parent()]
			}
			if p == nil || p.tag("hopwatch.upstream") != caller || p.tag("span.kind") != "client" {
				t.Errorf("hop %s (%s): the hopwatch span above its caller's spans is %v, want an attempt to %s", s.SpanID, s.tag("hopwatch.route"), p, caller)
				continue
			}
			for _, n := range stored.Spans {
				if n.SpanID.String() != s.SpanID {
					continue
				}
				if !n.Stitched || n.Parent < 0 || stored.Spans[n.Parent].SpanID.String() != p.SpanID {
					got := "none"
					if n.Parent >= 0 {
						got = stored.Spans[n.Parent].SpanID.String()
					}
					t.Errorf("hop %s (%s): hopwatch's store puts it under %s (stitched %v), jaeger under attempt %s",
						s.SpanID, n.Route, got, n.Stitched, p.SpanID)
				}
			}
		}
	}
	t.Logf("trace %s: %d spans in jaeger by service %v; hopwatch's store: %d spans, one tree", spans[0].TraceID, len(spans), services, len(stored.Spans))
}
