package conversation

import "github.com/hopwatch/hopwatch/telemetry"

// Observer adapts the tracker to telemetry's turn hook, so that telemetry
// reports entry hops here without importing this package (and the proxy
// without importing either). Every command that tracks conversations
// installs it with telemetry.SetTurnObserver.
func (t *Tracker) Observer() telemetry.TurnObserver { return observer{t} }

type observer struct{ tr *Tracker }

func (a observer) Entry(route string) (bool, bool) {
	if !a.tr.IsEntry(route) {
		return false, false
	}
	return true, a.tr.ReadsBody()
}

func (a observer) VerdictHeader() string { return a.tr.VerdictHeader() }

func (a observer) HeaderKeys() []string { return a.tr.HeaderKeys() }

func (a observer) SessionID(get func(string) string) string {
	id, _ := a.tr.Identify(get)
	return id
}

func (a observer) TurnEnded(t telemetry.Turn) telemetry.TurnMark {
	var buf [8]Hop // a turn's hops, without an allocation for most turns
	hops := buf[:0]
	for _, h := range t.Hops {
		hops = append(hops, Hop{Name: h.Route, Outcome: string(h.Outcome), Code: h.Code, Verdict: h.Verdict, FinishReason: h.FinishReason, Self: h.Self, Depth: h.Depth})
	}
	res := a.tr.Observe(Turn{
		Route: t.Route, Header: t.Header, Body: t.Body, BodyProto: t.BodyProto, TraceID: t.TraceID,
		Start: t.Start, Duration: t.Duration, FirstByte: t.FirstByte,
		Code: t.Code, HopOutcome: string(t.Outcome), Verdict: t.Verdict, Hops: hops,
	})
	return telemetry.TurnMark{SessionID: res.SessionID, Index: res.Index, Outcome: string(res.Outcome)}
}
