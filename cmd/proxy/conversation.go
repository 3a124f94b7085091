package main

import (
	"bytes"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/telemetry"
)

// newTracker builds the conversation tracker of cfg (nil: section absent)
// with its metrics on reg.
func newTracker(cfg *conversation.Config, reg prometheus.Registerer) (*conversation.Tracker, error) {
	if cfg == nil {
		return nil, nil
	}
	var key []byte
	if cfg.HashIDs {
		b, err := os.ReadFile(cfg.HashKeyFile)
		if err != nil {
			return nil, fmt.Errorf("conversation.hash_key_file: %w", err)
		}
		// A trailing newline is an editor's, not part of the secret.
		key = bytes.TrimRight(b, "\r\n")
	}
	return conversation.New(conversation.Options{Config: cfg, HashKey: key, Metrics: conversation.NewMetrics(reg)})
}

// turnAdapter lets telemetry report entry hops to the tracker without
// either package importing the other.
type turnAdapter struct{ tr *conversation.Tracker }

func (a turnAdapter) IsEntry(route string) bool { return a.tr.IsEntry(route) }

func (a turnAdapter) Identify(get func(string) string) (string, string) { return a.tr.Identify(get) }

func (a turnAdapter) TurnEnded(t telemetry.Turn) telemetry.TurnMark {
	var buf [8]conversation.Hop
	hops := buf[:0]
	for _, h := range t.Hops {
		hops = append(hops, conversation.Hop{Name: h.Route, Outcome: string(h.Outcome), Code: h.Code, Self: h.Self, Depth: h.Depth})
	}
	res := a.tr.Observe(conversation.Turn{
		Route: t.Route, SessionID: t.SessionID, Source: t.Source, TraceID: t.TraceID,
		Start: t.Start, Duration: t.Duration, FirstByte: t.FirstByte,
		Code: t.Code, HopOutcome: string(t.Outcome), Hops: hops,
	})
	return telemetry.TurnMark{SessionID: res.SessionID, Index: res.Index, Outcome: string(res.Outcome)}
}
