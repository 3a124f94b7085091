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

func (a turnAdapter) Entry(route string) (bool, bool) {
	if !a.tr.IsEntry(route) {
		return false, false
	}
	return true, a.tr.ReadsBody()
}

func (a turnAdapter) VerdictHeader() string { return a.tr.VerdictHeader() }

func (a turnAdapter) TurnEnded(t telemetry.Turn) telemetry.TurnMark {
	var buf [8]conversation.Hop
	hops := buf[:0]
	for _, h := range t.Hops {
		hops = append(hops, conversation.Hop{Name: h.Route, Outcome: string(h.Outcome), Code: h.Code, Verdict: h.Verdict, Self: h.Self, Depth: h.Depth})
	}
	res := a.tr.Observe(conversation.Turn{
		Route: t.Route, Header: t.Header, Body: t.Body, TraceID: t.TraceID,
		Start: t.Start, Duration: t.Duration, FirstByte: t.FirstByte,
		Code: t.Code, HopOutcome: string(t.Outcome), Verdict: t.Verdict, Hops: hops,
	})
	return telemetry.TurnMark{SessionID: res.SessionID, Index: res.Index, Outcome: string(res.Outcome)}
}
