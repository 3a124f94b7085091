// Package conversation turns entry-route requests into conversation
// signals: it groups turns into sessions, classifies each turn (error,
// canceled, fallback, slow, good) and flags repeats, frustration and
// regenerations, ends sessions on idleness, age, an explicit verdict or
// eviction, and classifies each ended session (handoff, resolved,
// abandoned, frustrated, completed, evicted) so that "good sessions / all
// sessions" can be an SLI next to latency and errors.
//
// It sits beside the request path, not on it: telemetry/ calls a hook when
// an entry-route hop ends, Tracker.Observer adapts that hook to
// Tracker.Observe (telemetry is the one package of ours this one imports),
// and nothing here can delay, change or refuse a request. The proxy never
// imports this package.
//
// It must never store raw user text. A message (read from the first 64 KiB
// of an entry request's JSON body) is reduced, on the caller's goroutine
// and without keeping the input, to a 64-bit similarity fingerprint
// (SimHash over words and word pairs) that lives only in memory for the
// session's life; keywords are matched on the fly. Session ids can be
// replaced by a keyed hash (HMAC-SHA256) before they are kept, exported or
// shown. The package opens nothing and starts no goroutine of its own
// (Tracker.Run and Events.Run are driven by their caller's context; Events
// writes to an injected io.Writer), and reads time only from an injected
// clock; metrics are registered on an injected registerer.
package conversation
