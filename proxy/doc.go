// Package proxy owns the listeners and the forwarding: gRPC through the frame
// relay (the default) or, with relay: messages, on grpc-go's own server
// transport with a raw pass-through codec, HTTP/1.1 and h2c (or, on
// TLS listeners, HTTP/1.1 and h2 by ALPN) through httputil.ReverseProxy,
// TLS on both sides (tls.go: certificates reloaded as their files change),
// upstream connection pools, load balancing and the mapping of errors to
// responses.
//
// It is first and last on the request path: listener → routes.Table.Match →
// hop → resilience → upstream endpoint. Configuration arrives as a
// routes.Spec through Proxy.Apply, which builds a complete new generation
// (route table, upstream pools, listeners) before swapping it in atomically;
// requests hold the generation they started on until they end, so a reload
// never cuts a call or a stream in flight.
//
// gRPC that arrives on an HTTP listener is held to what the gRPC listener
// would do (grpcreset.go): the client's grpc-timeout ends the call, the
// upstream is told the deadline, an upstream RST_STREAM becomes the status
// grpc-go would show, and a stream broken after its headers ends with a
// status rather than a reset.
//
// A gRPC listener on the frame relay (the default, or relay: frames;
// relay.go, relayconn.go, relayup.go) does not use grpc-go at all: it speaks HTTP/2 itself on both sides,
// decodes and re-encodes only the header blocks (to route, time and carry
// trace context) and forwards DATA frames as they arrive, with flow control
// passed through end to end, so that a stream holds at most a window of
// bytes in each direction. It keeps the grpc-go path's statuses, limits and
// telemetry, TLS included. A call whose route needs whole messages
// (retry, fallback) leaves the relay once routed: relaymsg.go serves it
// as a grpc.ServerStream over the relay's client stream to the resilient
// path, whose upstream is grpc-go's client, with the client's bytes
// acknowledged only as the call takes them.
//
// Routes with a retry or fallback policy take the resilient path: one
// policy, a per-call state machine (call, in call.go) that both listeners
// drive through a small adapter: grpcCall replays a recorded gRPC stream,
// httpCall a buffered HTTP body (behind ReverseProxy's Transport seam).
// Retries, the fallback sources, the latency budget and background
// completion are written once, there.
//
// It must never forward what it did not route: a request path or gRPC method
// that an upstream could read differently from the route table
// (routes.CheckPath, routes.CheckGRPCMethod), a CONNECT tunnel, or a call to
// any address but a configured endpoint. And it must never hold a client
// forever: a route without a timeout still bounds the wait for the first
// response (Options.FirstResponseTimeout). Nor may it trust what it did
// not verify: a caller named by a client certificate is one that the
// listener's client CAs verified, and an upstream is authenticated unless
// its configuration says insecure_skip_verify.
package proxy
