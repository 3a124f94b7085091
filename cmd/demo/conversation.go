package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/internal/convrun"
	"github.com/hopwatch/hopwatch/telemetry"
)

// conv is the demo's conversation tracking, wired as cmd/proxy wires it
// (internal/convrun), with its sweeper and event writer running until
// shutdown.
type conv struct {
	tr   *conversation.Tracker
	stop context.CancelFunc
	done chan struct{}
}

// startConversation starts the tracking of cfg (nil: none).
func startConversation(cfg *conversation.Config, reg prometheus.Registerer, tel *telemetry.Telemetry) (*conv, error) {
	r, err := convrun.Open(cfg, reg, tel)
	if err != nil || r == nil {
		return nil, err
	}
	tel.SetTurnObserver(r.Tracker.Observer())
	tel.SetTurnSLOs(cfg.TurnSLOs())
	ctx, cancel := context.WithCancel(context.Background())
	c := &conv{tr: r.Tracker, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		r.Run(ctx) // closes what Open opened when ctx ends
	}()
	return c, nil
}

// shutdown stops the sweeper and writes the queued events.
func (c *conv) shutdown() {
	if c == nil {
		return
	}
	c.stop()
	<-c.done
}

// waitSessionsEnded waits, once the users are done, until hopwatch has
// ended every session (each one idle_timeout after its last turn), so that
// the final table compares whole runs; ctx (Ctrl-C, -duration) cuts it
// short.
func (a *app) waitSessionsEnded(ctx context.Context) {
	if a.conv == nil {
		return
	}
	idle := a.conv.tr.Config().IdleTimeout
	ctx, cancel := context.WithTimeout(ctx, idle+3*convrun.SweepEvery)
	defer cancel()
	tick := time.NewTicker(convrun.SweepEvery / 4)
	defer tick.Stop()
	for a.conv.tr.Stats().Active > 0 {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
