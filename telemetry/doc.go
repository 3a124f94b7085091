// Package telemetry times every hop: W3C trace context extraction and
// injection, one server span per incoming request and one client span per
// upstream attempt, the hopwatch_hop_* Prometheus series with trace
// exemplars, OTLP export that never blocks requests, the built-in trace
// store and the hop statistics behind /api/hops and /api/bottlenecks.
//
// It is third on the request path (listener → route → hop → resilience →
// upstream) and only observes: nothing here decides whether a request
// proceeds. The proxy calls it through Hop, whose methods are safe on a nil
// *Hop so that a proxy built without telemetry pays nothing.
//
// otelgrpc and otelhttp are not used on the forwarding path: the gRPC path
// moves raw frames through one UnknownServiceHandler (otelgrpc's stats
// handler would see every call as the same unknown method and could not
// tell routes, callers or attempts apart), and the HTTP path needs one
// client span per endpoint attempt inside the proxy's own RoundTripper.
// Both record exactly the semantic-convention attributes those libraries
// would, plus the hopwatch.* ones.
//
// Hop spans are never OpenTelemetry SDK spans. Span contexts are made
// here with the SDK's sampling rule, and with an OTLP exporter a sampled
// hop and its attempts record what their exported spans need in compact
// form (hopSpan, export.go); the attributes, and the OTLP protobuf, are
// built by the export goroutine from batches, off the request path,
// written straight in wire format (otlpwire.go) and sent as bytes
// (otlpsend.go). A request never waits for the exporter: past queue_size
// spans in flight a span is dropped and counted.
//
// On genai routes it reads token usage from the bodies as they pass
// (Exchange, GenAICall): each slice is scanned after it was handed on,
// with O(1) memory, so a body is never held back, copied or altered. The
// access log (AccessLog) is written from Hop.End through a bounded queue
// that drops, and counts, lines rather than make a request wait for a
// disk; a line never holds a body, a header or a query string.
//
// On conversation entry routes (a TurnObserver is set), the spans of a
// turn's other hops end before the turn is classified; the turn holder
// (turnhold.go) keeps their spans for export, bounded in count and time and
// without a goroutine of its own, until the turn's attributes can be added,
// and never holds a span of a trace without a turn in flight.
//
// The trace store draws one tree per turn even when the services run
// their own OpenTelemetry SDK and hopwatch never sees their spans: a hop
// whose parent it did not see is stitched under the attempt that carried
// the request into its caller (stitch.go). With telemetry.receive.otlp the
// services can also send their spans (Receiver, receive.go, served on the
// admin address); those are shown in the waterfall and never count as
// hops, in metrics, statistics or the bottleneck analysis, nor cost the
// hops' traces room in the store.
package telemetry
