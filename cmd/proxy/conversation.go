package main

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

// convParts are the conversation tracker of a configuration and, when
// events.file is set, its event writer and file.
type convParts struct {
	tr     *conversation.Tracker
	events *conversation.Events
	file   *os.File // nil for standard output
	otlp   *telemetry.EventLog
}

// newConversation builds the tracker of cfg (nil: section absent) with its
// metrics on reg, and opens the events file.
func newConversation(cfg *conversation.Config, reg prometheus.Registerer, tel *telemetry.Telemetry) (*convParts, error) {
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
	parts := &convParts{}
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
			parts.close()
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
		parts.close()
		return nil, err
	}
	parts.tr = tr
	return parts, nil
}

// run sweeps idle sessions and writes events until ctx ends.
func (c *convParts) run(ctx context.Context) {
	var wg sync.WaitGroup
	if c.events != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.events.Run(ctx)
		}()
	}
	c.tr.Run(ctx, convSweepEvery)
	wg.Wait()
	c.close()
}

func (c *convParts) close() {
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
