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
// told about every chat turn by telemetry through turnAdapter, an optional
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
	tel.SetTurnObserver(turnAdapter{tr})
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

// turnAdapter lets telemetry report entry hops to the tracker without
// either package importing the other.
type turnAdapter struct{ tr *conversation.Tracker }

func (a turnAdapter) Entry(route string) (bool, bool) {
	if !a.tr.IsEntry(route) {
		return false, false
	}
	return true, a.tr.ReadsBody()
}

func (a turnAdapter) VerdictHeader() string { return a.tr.VerdictHeader() }

func (a turnAdapter) HeaderKeys() []string { return a.tr.HeaderKeys() }

func (a turnAdapter) SessionID(get func(string) string) string {
	id, _ := a.tr.Identify(get)
	return id
}

func (a turnAdapter) TurnEnded(t telemetry.Turn) telemetry.TurnMark {
	hops := make([]conversation.Hop, 0, len(t.Hops))
	for _, h := range t.Hops {
		hops = append(hops, conversation.Hop{Name: h.Route, Outcome: string(h.Outcome), Code: h.Code, Verdict: h.Verdict, Self: h.Self, Depth: h.Depth})
	}
	res := a.tr.Observe(conversation.Turn{
		Route: t.Route, Header: t.Header, Body: t.Body, BodyProto: t.BodyProto, TraceID: t.TraceID,
		Start: t.Start, Duration: t.Duration, FirstByte: t.FirstByte,
		Code: t.Code, HopOutcome: string(t.Outcome), Verdict: t.Verdict, Hops: hops,
	})
	return telemetry.TurnMark{SessionID: res.SessionID, Index: res.Index, Outcome: string(res.Outcome)}
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
