package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/telemetry"
)

// The demo wires the conversation tracker as cmd/proxy does (see its
// conversation.go): a tracker with its metrics on hopwatch's registry,
// told about every chat turn by telemetry through Tracker.Observer, an optional
// events file, and a sweeper that ends idle sessions. It is repeated here,
// not shared, because both are main packages and the wiring is a few
// lines of glue; the rules all live in conversation/.

// convSweepEvery is how often idle sessions are ended: a session's end is
// counted at most this late.
const convSweepEvery = time.Second

// conv is the demo's conversation tracking.
type conv struct {
	tr     *conversation.Tracker
	events *conversation.Events
	file   *os.File
	stop   context.CancelFunc
	done   chan struct{}
}

// startConversation builds the tracker of cfg (nil: none) and starts its
// sweeper and event writer; stop ends them.
func startConversation(cfg *conversation.Config, reg prometheus.Registerer, tel *telemetry.Telemetry) (*conv, error) {
	if cfg == nil {
		return nil, nil
	}
	m := conversation.NewMetrics(reg)
	opts := conversation.Options{Config: cfg, Metrics: m}
	c := &conv{done: make(chan struct{})}
	if f := cfg.Events.File; f != "" {
		w := os.Stdout
		if f != "-" {
			file, err := os.OpenFile(f, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
			if err != nil {
				return nil, fmt.Errorf("conversation.events.file: %w", err)
			}
			c.file, w = file, file
		}
		c.events = conversation.NewEvents(w, 0, m)
		opts.OnTurn, opts.OnSession = c.events.Turn, c.events.Session
	}
	tr, err := conversation.New(opts)
	if err != nil {
		c.closeFile()
		return nil, err
	}
	c.tr = tr
	tel.SetTurnObserver(tr.Observer())
	tel.SetTurnSLOs(cfg.TurnSLOs())
	ctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	go func() {
		defer close(c.done)
		var wg sync.WaitGroup
		if c.events != nil {
			wg.Go(func() { c.events.Run(ctx) })
		}
		tr.Run(ctx, convSweepEvery)
		wg.Wait()
		c.closeFile()
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

func (c *conv) closeFile() {
	if c.file != nil {
		c.file.Close()
	}
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
	ctx, cancel := context.WithTimeout(ctx, idle+3*convSweepEvery)
	defer cancel()
	tick := time.NewTicker(convSweepEvery / 4)
	defer tick.Stop()
	for a.conv.tr.Stats().Active > 0 {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
