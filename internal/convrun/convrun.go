// Package convrun wires conversation tracking for the commands (cmd/proxy
// and cmd/demo): it reads the hash key file, opens the events file and the
// OTLP event log, builds the tracker with its metrics, and runs its
// sweeper and event writer. The rules all live in conversation/, which
// opens nothing itself; this is the one place that does, so that both
// commands treat every field of the section alike.
//
// It is off the request path: telemetry reports turns to the tracker
// through Tracker.Observer.
package convrun

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/internal/tlsfile"
	"github.com/hopwatch/hopwatch/telemetry"
)

// SweepEvery is how often idle sessions are ended when no turn comes to do
// it: a session's end is counted at most this late.
const SweepEvery = time.Second

// Running is the conversation tracking of a configuration: its tracker
// and, when events are written, their writer, file and OTLP event log.
type Running struct {
	Tracker *conversation.Tracker
	events  *conversation.Events
	file    *os.File // nil for standard output
	otlp    *telemetry.EventLog
}

// Open builds the tracker of cfg (nil: section absent, nil result) with
// its metrics on reg, and opens what its events go to. Run it, or Close it
// if it is never run.
func Open(cfg *conversation.Config, reg prometheus.Registerer, tel *telemetry.Telemetry) (*Running, error) {
	if cfg == nil {
		return nil, nil
	}
	var key []byte
	if cfg.HashIDs {
		b, err := tlsfile.Read(cfg.HashKeyFile) // bounded, and a FIFO does not hang start-up
		if err != nil {
			return nil, fmt.Errorf("conversation.hash_key_file: %w", err)
		}
		// A trailing newline is an editor's, not part of the secret.
		key = bytes.TrimRight(b, "\r\n")
	}
	m := conversation.NewMetrics(reg)
	opts := conversation.Options{Config: cfg, HashKey: key, Metrics: m}
	parts := &Running{}
	var sinks []io.Writer // each gets every event line whole, in one Write
	switch f := cfg.Events.File; f {
	case "":
	case "-":
		sinks = append(sinks, os.Stdout)
	default:
		// Appended, never truncated: a restart must not lose the events
		// a shipper has not read yet. Not world-readable: session ids.
		file, err := os.OpenFile(f, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return nil, fmt.Errorf("conversation.events.file: %w", err)
		}
		parts.file = file
		sinks = append(sinks, file)
	}
	if cfg.Events.OTLP {
		el, err := tel.OpenEventLog("conversation")
		if err != nil {
			parts.Close()
			return nil, fmt.Errorf("conversation.events.otlp: %w", err)
		}
		parts.otlp = el
		sinks = append(sinks, el)
	}
	if len(sinks) > 0 {
		parts.events = conversation.NewEvents(io.MultiWriter(sinks...), 0, m)
	}
	if parts.events != nil {
		opts.OnTurn, opts.OnSession = parts.events.Turn, parts.events.Session
	}
	tr, err := conversation.New(opts)
	if err != nil {
		parts.Close()
		return nil, err
	}
	parts.Tracker = tr
	return parts, nil
}

// run sweeps idle sessions and writes events until ctx ends.
func (c *Running) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if c.events != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.events.Run(ctx)
		}()
	}
	c.Tracker.Run(ctx, SweepEvery)
	wg.Wait()
	c.Close()
}

func (c *Running) Close() {
	if c.file != nil {
		c.file.Close()
	}
	if c.otlp != nil {
		// Flush what the last sweep ended, within a bound: a collector
		// that is down must not hold up shutdown.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.otlp.Close(ctx)
	}
}
