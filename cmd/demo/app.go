package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.yaml.in/yaml/v3"

	"github.com/hopwatch/hopwatch/admin"
	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/demo"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/telemetry"
)

// app is one running demo: the bot stack and hopwatch in front of it.
type app struct {
	log   *slog.Logger
	stack *demo.Stack
	cfg   *config.Config
	tel   *telemetry.Telemetry
	proxy *proxy.Proxy
	admin *admin.Server
	// conv tracks the chat's conversations (nil without a conversation
	// section).
	conv  *conv
	ready atomic.Bool
}

// drainTimeout bounds the proxy's drain at shutdown. Users are stopped
// first, so little is in flight; a stuck call must not hold up Ctrl-C.
const drainTimeout = 5 * time.Second

// start runs the stack and hopwatch; any error leaves nothing running.
// The order follows the dependencies: the services' ports go into
// hopwatch's configuration, and hopwatch's listener addresses into the
// gateway.
func start(svc demo.Config, place demo.Placement, log *slog.Logger) (*app, error) {
	stack, err := demo.Start(svc)
	if err != nil {
		return nil, err
	}
	a := &app{log: log, stack: stack}
	cfg, err := stack.HopwatchConfig(place)
	if err != nil {
		a.stop()
		return nil, err
	}
	a.cfg = cfg

	// As cmd/proxy's start: telemetry, then admin, so that a port clash
	// there fails before any listener takes traffic, then the listeners.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.tel, err = telemetry.New(telemetry.Options{Config: cfg.Telemetry, Registry: reg, Logger: log})
	if err != nil {
		a.stop()
		return nil, err
	}
	a.tel.SetGenAI(cfg.GenAI)
	a.conv, err = startConversation(cfg.Conversation, reg, a.tel)
	if err != nil {
		a.stop()
		return nil, err
	}
	var sessions *conversation.Tracker
	if a.conv != nil {
		sessions = a.conv.tr
	}
	a.proxy = proxy.New(proxy.Options{Logger: log, DrainTimeout: drainTimeout, Telemetry: a.tel})
	var otlp http.Handler // telemetry.receive.otlp
	if a.tel.Receiver != nil {
		otlp = a.tel.Receiver
	}
	a.admin = admin.New(admin.Options{
		Logger: log, Ready: a.ready.Load, Config: a.configDoc, OTLP: otlp,
		Traces: a.tel.Store, Hops: a.tel.Stats, Sessions: sessions,
		Breakers: func() any {
			return map[string]any{"breakers": a.proxy.Breakers(), "fallbacks": a.tel.FallbackCounts()}
		},
	})
	a.admin.Handle("GET /metrics", a.tel.MetricsHandler())
	if err := a.admin.Start(cfg.Admin.Address); err != nil {
		a.admin = nil
		a.stop()
		return nil, err
	}
	if err := a.proxy.Apply(&cfg.Spec); err != nil {
		a.stop()
		return nil, err
	}
	grpcAddr, httpAddr := a.proxy.Addr(demo.ListenerGRPC), a.proxy.Addr(demo.ListenerHTTP)
	if grpcAddr == nil || httpAddr == nil {
		a.stop()
		return nil, errors.New("hopwatch started without the demo's listeners")
	}
	if a.tel.Receiver != nil {
		if err := stack.ExportSpansTo(a.admin.Addr().String()); err != nil {
			a.stop()
			return nil, err
		}
	}
	if err := stack.ServeGateway(demo.Listeners{GRPC: grpcAddr.String(), HTTP: httpAddr.String()}); err != nil {
		a.stop()
		return nil, err
	}
	a.tel.ConfigReloaded(true)
	a.ready.Store(true)
	return a, nil
}

// httpURL is the base URL of hopwatch's http listener, where users call.
func (a *app) httpURL() string {
	return "http://" + a.proxy.Addr(demo.ListenerHTTP).String()
}

// adminURL is the base URL of the admin server.
func (a *app) adminURL() string {
	return "http://" + a.admin.Addr().String()
}

// stop shuts down in the reverse order of start: hopwatch drains the calls
// in flight (which still need the services), then the services stop, then
// telemetry flushes and the admin server stops. Whatever start got to is
// stopped.
func (a *app) stop() {
	a.ready.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if a.proxy != nil {
		if err := a.proxy.Shutdown(ctx); err != nil {
			a.log.Warn("hopwatch drain cut short", "err", err)
		}
	}
	if err := a.stack.Close(ctx); err != nil {
		a.log.Warn("demo services stopped with calls in flight", "err", err)
	}
	a.conv.shutdown() // after the last turn: its event is written

	if a.tel != nil {
		if err := a.tel.Shutdown(ctx); err != nil {
			a.log.Warn("span export at shutdown", "err", err)
		}
	}
	if a.admin != nil {
		a.admin.Shutdown(ctx)
	}
}

// configDoc is the /config document, as cmd/proxy serves it: the effective
// configuration with the field names of the file.
func (a *app) configDoc() any {
	var effective any
	if b, err := yaml.Marshal(a.cfg); err == nil {
		yaml.Unmarshal(b, &effective)
	}
	return map[string]any{
		"file":   demo.ConfigFile + " (embedded; service endpoints and addresses set by cmd/demo)",
		"config": effective,
	}
}

// describeStartError turns a start failure into what a person needs to
// read; fallback is the -fallback=on case.
func describeStartError(err error) string {
	var list config.Errors
	if errors.As(err, &list) {
		return fmt.Sprintf("the demo's hopwatch configuration is invalid:\n%v", err)
	}
	return err.Error()
}
