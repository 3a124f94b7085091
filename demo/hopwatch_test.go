package demo_test

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/demo"
	"github.com/hopwatch/hopwatch/routes"
)

// TestExampleConfigsLoad keeps the example files valid: a user's first
// `proxy -check` must pass on them.
func TestExampleConfigsLoad(t *testing.T) {
	for _, path := range []string{
		"../deploy/examples/demo.yaml",
		"../deploy/examples/hopwatch.yaml",
	} {
		t.Run(path, func(t *testing.T) {
			if _, err := config.Load(path); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEmbeddedConfigIsTheExample: the demo runs the file users read.
func TestEmbeddedConfigIsTheExample(t *testing.T) {
	want, err := os.ReadFile("../deploy/examples/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(demo.HopwatchYAML(), want) {
		t.Fatal("demo/hopwatch.yaml differs from deploy/examples/demo.yaml: run `go generate ./demo`")
	}
}

func TestParseHopwatchConfig(t *testing.T) {
	endpoints := map[string]string{
		demo.ServiceGateway:   "127.0.0.1:41001",
		demo.ServiceNLU:       "127.0.0.1:41002",
		demo.ServiceDM:        "127.0.0.1:41003",
		demo.ServiceInference: "127.0.0.1:41004",
		demo.ServiceKB:        "127.0.0.1:41005",
	}
	tests := []struct {
		name      string
		endpoints map[string]string
		place     demo.Placement
		// want* are checked on success.
		wantAdmin, wantGRPC, wantHTTP string
		wantEndpoints                 map[string]string
		// wantSLO, wantIdle and wantEvents are the conversation section's
		// (zero: not checked).
		wantSLO, wantIdle time.Duration
		wantEvents        string
		wantErr           error
		wantAnyErr        bool
		// wantOTLP is telemetry.tracing.otlp's endpoint ("": none);
		// wantReceive telemetry.receive.otlp.
		wantOTLP    string
		wantReceive bool
	}{
		{
			name:      "as written",
			wantAdmin: "127.0.0.1:9901", wantGRPC: "127.0.0.1:7000", wantHTTP: "127.0.0.1:7080",
			wantEndpoints: map[string]string{"gateway": "127.0.0.1:7101", "kb": "127.0.0.1:7105"},
			wantSLO:       time.Second, wantIdle: 10 * time.Second,
		},
		{
			name:      "conversation tuned",
			place:     demo.Placement{TurnSLO: 1500 * time.Millisecond, IdleTimeout: 3 * time.Second, EventsFile: "/tmp/events.jsonl"},
			wantAdmin: "127.0.0.1:9901", wantGRPC: "127.0.0.1:7000", wantHTTP: "127.0.0.1:7080",
			wantSLO: 1500 * time.Millisecond, wantIdle: 3 * time.Second, wantEvents: "/tmp/events.jsonl",
		},
		{
			name:      "placed and pointed at services",
			endpoints: endpoints,
			place:     demo.Placement{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0"},
			wantAdmin: "127.0.0.1:0", wantGRPC: "127.0.0.1:0", wantHTTP: "127.0.0.1:0",
			wantEndpoints: endpoints,
		},
		{
			name:      "exporting to a collector",
			place:     demo.Placement{OTLP: "127.0.0.1:4317"},
			wantAdmin: "127.0.0.1:9901", wantGRPC: "127.0.0.1:7000", wantHTTP: "127.0.0.1:7080",
			wantOTLP: "127.0.0.1:4317",
		},
		{
			name:      "receiving the services' spans, and exporting",
			place:     demo.Placement{OTLP: "127.0.0.1:4317", Receive: true},
			wantAdmin: "127.0.0.1:9901", wantGRPC: "127.0.0.1:7000", wantHTTP: "127.0.0.1:7080",
			wantOTLP: "127.0.0.1:4317", wantReceive: true,
		},
		{
			name:       "listener clash is a config error",
			place:      demo.Placement{GRPC: "127.0.0.1:7080"},
			wantAnyErr: true,
		},
		{
			name:       "unknown upstream",
			endpoints:  map[string]string{"search": "127.0.0.1:1"},
			wantAnyErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := demo.ParseHopwatchConfig(tt.endpoints, tt.place)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			case tt.wantAnyErr:
				if err == nil {
					t.Fatal("no error")
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if cfg.Admin.Address != tt.wantAdmin {
				t.Errorf("admin %s, want %s", cfg.Admin.Address, tt.wantAdmin)
			}
			if got := listener(cfg, demo.ListenerGRPC).Address; got != tt.wantGRPC {
				t.Errorf("grpc listener %s, want %s", got, tt.wantGRPC)
			}
			if got := listener(cfg, demo.ListenerHTTP).Address; got != tt.wantHTTP {
				t.Errorf("http listener %s, want %s", got, tt.wantHTTP)
			}
			for name, ep := range tt.wantEndpoints {
				u := upstream(cfg, name)
				if len(u.Endpoints) != 1 || u.Endpoints[0] != ep {
					t.Errorf("upstream %s endpoints %v, want [%s]", name, u.Endpoints, ep)
				}
			}
			if c := cfg.Conversation; c == nil || len(c.EntryRoutes) != 1 || c.EntryRoutes[0] != demo.EntryRoute {
				t.Errorf("conversation %+v, want entry route %s", c, demo.EntryRoute)
			} else if tt.wantSLO != 0 && (c.TurnSLO != tt.wantSLO || c.IdleTimeout != tt.wantIdle || c.Events.File != tt.wantEvents) {
				t.Errorf("conversation turn_slo %v idle_timeout %v events %q, want %v %v %q", c.TurnSLO, c.IdleTimeout, c.Events.File, tt.wantSLO, tt.wantIdle, tt.wantEvents)
			}
			switch o := cfg.Telemetry.Tracing.OTLP; {
			case tt.wantOTLP == "" && o != nil:
				t.Errorf("telemetry.tracing.otlp %+v, want none", o)
			case tt.wantOTLP != "" && (o == nil || o.Endpoint != tt.wantOTLP || o.Protocol != "grpc"):
				t.Errorf("telemetry.tracing.otlp %+v, want endpoint %s over grpc", o, tt.wantOTLP)
			}
			if cfg.Telemetry.Receive.OTLP != tt.wantReceive {
				t.Errorf("telemetry.receive.otlp %v, want %v", cfg.Telemetry.Receive.OTLP, tt.wantReceive)
			}
			for _, svc := range demo.Services {
				if upstream(cfg, svc).Name == "" {
					t.Errorf("no upstream for service %s", svc)
				}
			}
		})
	}
}

// TestParseHopwatchConfigFallback: the fallback section goes on the KB
// route. Until hopwatch has fallbacks, the loader refuses it, and the demo
// must say so (ErrFallbackUnavailable) rather than run without it.
func TestParseHopwatchConfigFallback(t *testing.T) {
	cfg, err := demo.ParseHopwatchConfig(nil, demo.Placement{Fallback: true})
	if errors.Is(err, demo.ErrFallbackUnavailable) {
		return
	}
	if err != nil {
		t.Fatalf("err = %v, want nil or ErrFallbackUnavailable", err)
	}
	for _, r := range cfg.Routes {
		if (r.Fallback != nil) != (r.Name == demo.KBRoute) {
			t.Errorf("route %s: fallback %+v", r.Name, r.Fallback)
		}
	}
}

func listener(cfg *config.Config, name string) routes.Listener {
	for _, l := range cfg.Listeners {
		if l.Name == name {
			return l
		}
	}
	return routes.Listener{}
}

func upstream(cfg *config.Config, name string) routes.Upstream {
	for _, u := range cfg.Upstreams {
		if u.Name == name {
			return u
		}
	}
	return routes.Upstream{}
}
