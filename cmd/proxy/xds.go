package main

import (
	"context"
	"errors"
	"reflect"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/xds"
)

// xdsSource runs the xDS client when the file has an xds section: the
// listeners, routes and upstreams then come from the management server,
// each update applied like a reload.
type xdsSource struct {
	client *xds.Client
	stop   context.CancelFunc
	done   chan struct{}
}

// startXDS starts the client of cfg.XDS, or nothing without one.
func (a *app) startXDS(cfg *config.Config, reg prometheus.Registerer) error {
	if cfg.XDS == nil {
		return nil
	}
	apply := func(spec *routes.Spec) error {
		err := a.proxy.Apply(spec)
		var partial *proxy.PartialError
		if errors.As(err, &partial) {
			// Live, but a listener waiting for its address did not bind:
			// the update is taken (ACKed), the failure logged.
			a.log.Error("xDS configuration applied, but listeners failed to start", "err", err)
			return nil
		}
		return err
	}
	c, err := xds.New(xds.Options{Config: *cfg.XDS, Base: &cfg.Spec, Apply: apply, Registerer: reg, Logger: a.log})
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	a.xds = &xdsSource{client: c, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(a.xds.done)
		if err := c.Run(ctx); err != nil {
			a.log.Error("xDS client stopped", "err", err)
		}
	}()
	return nil
}

// stopXDS ends the client (before the proxy drains).
func (a *app) stopXDS() {
	if a.xds != nil {
		a.xds.stop()
		<-a.xds.done
	}
}

// applyRouting applies the routing part of a reloaded file: the file's
// own, or, with xDS, what the file keeps (callers, replay) under the
// server's listeners, routes and upstreams.
func (a *app) applyRouting(cfg *config.Config) error {
	if a.xds == nil && cfg.XDS == nil {
		return a.proxy.Apply(&cfg.Spec)
	}
	if a.xds == nil || !reflect.DeepEqual(cfg.XDS, a.cfg.XDS) {
		return errors.New("the xds section changed: restart hopwatch to apply it")
	}
	return a.xds.client.SetBase(&cfg.Spec)
}

// sourceDoc says where the routing configuration comes from, for /config.
func (a *app) sourceDoc() any {
	if a.xds == nil {
		return map[string]any{"source": "file", "file": a.path}
	}
	return a.xds.client.Status()
}
