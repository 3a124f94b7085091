package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.yaml.in/yaml/v3"

	"github.com/hopwatch/hopwatch/admin"
	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/internal/convrun"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/telemetry"
)

// app is one running hopwatch: configuration file, proxy, admin server.
type app struct {
	path   string
	log    *slog.Logger
	stdout io.Writer // where access_log.output "stdout" writes
	tel    *telemetry.Telemetry
	proxy  *proxy.Proxy
	admin  *admin.Server
	// conv tracks conversations (nil without a conversation section);
	// stopConv ends its sweeper and event writer, convDone closes when
	// they have (events flushed, file closed).
	conv     *conversation.Tracker
	stopConv context.CancelFunc
	convDone chan struct{}

	ready atomic.Bool
	// xds is the xDS client when the file has an xds section.
	xds *xdsSource

	// reloading serializes reloads, file read included, so that two
	// reloads cannot apply their files out of order. It is never held by
	// /config or shutdown.
	reloading sync.Mutex

	// mu guards the fields below. It is held only to read or swap them,
	// never across file I/O: a file that cannot be read promptly must not
	// stall /config or shutdown.
	mu        sync.Mutex
	cfg       *config.Config
	adminAddr string
	last      reloadResult
}

// reloadResult is the outcome of the last load, shown at /config.
type reloadResult struct {
	Time    time.Time `json:"time"`
	Trigger string    `json:"trigger"`
	OK      bool      `json:"ok"`
	Errors  []string  `json:"errors,omitempty"`
}

// start loads the file, binds the admin server and every listener. Any
// error leaves nothing running.
func start(path string, grace time.Duration, log *slog.Logger, stdout io.Writer) (*app, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	tel, err := telemetry.New(telemetry.Options{Config: cfg.Telemetry, Registry: reg, Logger: log})
	if err != nil {
		return nil, err
	}
	tel.SetGenAI(cfg.GenAI)
	alog, err := tel.OpenAccessLog(cfg.AccessLog, stdout)
	if err != nil {
		tel.Shutdown(context.Background())
		return nil, err
	}
	conv, err := convrun.Open(cfg.Conversation, reg, tel)
	if err != nil {
		alog.Close()
		tel.Shutdown(context.Background())
		return nil, err
	}
	var tracker *conversation.Tracker
	if conv != nil {
		tracker = conv.Tracker
	}
	tel.SetAccessLog(alog)
	a := &app{
		path:      path,
		log:       log,
		stdout:    stdout,
		tel:       tel,
		proxy:     proxy.New(proxy.Options{Logger: log, DrainTimeout: grace, Telemetry: tel}),
		cfg:       cfg,
		adminAddr: cfg.Admin.Address,
		last:      reloadResult{Time: time.Now(), Trigger: "start", OK: true},
		conv:      tracker,
	}
	if conv != nil {
		tel.SetTurnObserver(tracker.Observer())
		// The bottleneck analysis calls every turn over its SLO slow. The
		// section cannot change on reload, so this is set once.
		tel.SetTurnSLOs(cfg.Conversation.TurnSLOs())
	}
	var otlp http.Handler // telemetry.receive.otlp
	if tel.Receiver != nil {
		otlp = tel.Receiver
	}
	a.admin = admin.New(admin.Options{
		Logger: log, Ready: a.ready.Load, Config: a.configDoc, OTLP: otlp,
		Traces: tel.Store, Hops: tel.Stats, AllowedHosts: cfg.Admin.AllowedHosts, Sessions: tracker,
		Breakers: func() any {
			return map[string]any{"breakers": a.proxy.Breakers(), "fallbacks": tel.FallbackCounts()}
		},
		GenAI: func() any {
			models, err := tel.GenAIUsage()
			if err != nil {
				return map[string]any{"error": err.Error()}
			}
			return map[string]any{"models": models}
		},
	})
	a.admin.Handle("GET /metrics", tel.MetricsHandler())
	// abort undoes a start that failed once the admin server is bound:
	// listeners, admin, access log, telemetry and conversation, in that
	// order, so nothing is left running.
	abort := func(err error) (*app, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		a.proxy.Shutdown(ctx)
		a.admin.Shutdown(ctx)
		tel.SetAccessLog(nil).Close()
		tel.Shutdown(ctx)
		if conv != nil {
			conv.Close()
		}
		return nil, err
	}
	if err := a.admin.Start(cfg.Admin.Address); err != nil {
		tel.SetAccessLog(nil).Close()
		tel.Shutdown(context.Background())
		if conv != nil {
			conv.Close()
		}
		return nil, err
	}
	if err := a.proxy.Apply(&cfg.Spec); err != nil {
		return abort(err)
	}
	tel.ConfigReloaded(true)
	if err := a.startXDS(cfg, reg); err != nil {
		return abort(err)
	}
	if conv != nil {
		ctx, stop := context.WithCancel(context.Background())
		a.stopConv, a.convDone = stop, make(chan struct{})
		go func() {
			defer close(a.convDone)
			conv.Run(ctx)
		}()
	}
	a.ready.Store(true)
	log.Info("hopwatch started", "config", path, "admin", a.admin.Addr().String(), "version", buildVersion())
	return a, nil
}

// reload applies the file as it is now. An invalid file, or one the proxy
// cannot apply, leaves the running configuration untouched; the error is
// logged and shown at /config.
func (a *app) reload(trigger string) {
	a.reloading.Lock()
	defer a.reloading.Unlock()
	res := reloadResult{Time: time.Now(), Trigger: trigger}
	cfg, err := config.Load(a.path) // file I/O: before taking mu
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil && cfg.Admin.Address != a.adminAddr {
		err = fmt.Errorf("admin.address changed from %s to %s: restart hopwatch to move the admin server", a.adminAddr, cfg.Admin.Address)
	}
	if err == nil && !a.tel.SameConfig(cfg.Telemetry) {
		// The tracer provider and exporter are built once; swapping them
		// under live spans would lose or misparent them.
		err = errors.New("the telemetry section changed: restart hopwatch to apply it")
	}
	if err == nil && !reflect.DeepEqual(cfg.Conversation, a.cfg.Conversation) {
		// Sessions live in the tracker; rebuilding it would end them all
		// with outcomes nobody earned.
		err = errors.New("the conversation section changed: restart hopwatch to apply it")
	}
	var newLog *telemetry.AccessLog
	logChanged := err == nil && !reflect.DeepEqual(cfg.AccessLog, a.cfg.AccessLog)
	if logChanged {
		newLog, err = a.tel.OpenAccessLog(cfg.AccessLog, a.stdout)
	}
	if err == nil {
		a.tel.SetGenAI(cfg.GenAI)
		// Apply either refuses the configuration whole (nothing changed) or
		// swaps it in; a PartialError says it is live but a listener that
		// had to wait for its address could not bind.
		err = a.applyRouting(cfg)
		var partial *proxy.PartialError
		if err == nil || errors.As(err, &partial) {
			a.cfg = cfg
			a.admin.SetAllowedHosts(cfg.Admin.AllowedHosts)
			if logChanged {
				a.tel.SetAccessLog(newLog).Close()
				newLog = nil
			}
		} else {
			a.tel.SetGenAI(a.cfg.GenAI)
		}
	}
	newLog.Close() // opened for a configuration that was refused
	res.OK = err == nil
	a.tel.ConfigReloaded(res.OK)
	if err != nil {
		var list config.Errors
		if errors.As(err, &list) {
			for _, e := range list {
				res.Errors = append(res.Errors, e.Error())
			}
		} else {
			res.Errors = []string{err.Error()}
		}
		a.log.Error("reload failed; previous configuration keeps serving", "trigger", trigger, "err", err)
	} else {
		a.log.Info("configuration reloaded", "trigger", trigger)
	}
	a.last = res
}

// drain turns readiness off, lets in-flight work finish within grace, and
// stops everything.
func (a *app) drain(grace time.Duration) {
	a.ready.Store(false)
	a.stopXDS()
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := a.proxy.Shutdown(ctx); err != nil {
		a.log.Warn("drain cut short; remaining calls were closed", "err", err)
	}
	// The drained calls' lines are written before the log closes.
	a.tel.SetAccessLog(nil).Close()
	// Spans of the drained calls still go out, within a bound.
	actx, acancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer acancel()
	if err := a.tel.Shutdown(actx); err != nil {
		a.log.Warn("span export at shutdown", "err", err)
	}
	a.admin.Shutdown(actx)
	if a.stopConv != nil {
		a.stopConv()
		<-a.convDone
	}
}

// configDoc is the /config document: the effective configuration (defaults
// filled in, field names as in the file) and the last reload's outcome.
func (a *app) configDoc() any {
	a.mu.Lock()
	cfg, last := a.cfg, a.last
	a.mu.Unlock()
	var effective any
	if b, err := yaml.Marshal(cfg); err == nil {
		yaml.Unmarshal(b, &effective)
	}
	return map[string]any{
		"file":        a.path,
		"config":      effective,
		"last_reload": last,
		"routing":     a.sourceDoc(),
	}
}

// reopenLogs reopens the access log file (SIGUSR1, after logrotate moved
// it away). On failure the old file stays in use.
func (a *app) reopenLogs() {
	if err := a.tel.AccessLog().Reopen(); err != nil {
		a.log.Error("access log reopen failed; still writing to the old file", "err", err)
		return
	}
	a.log.Info("access log reopened")
}
