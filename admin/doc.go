// Package admin is the admin HTTP server: health and readiness for
// orchestrators, the effective configuration with the last reload result,
// and the JSON APIs over the trace store and hop statistics (/api/hops,
// /api/traces, /api/bottlenecks). /metrics is mounted by the command.
// With telemetry.receive.otlp it also serves telemetry's OTLP receiver
// (OTLP/HTTP, and OTLP/gRPC over h2c on the same port), behind the same
// loopback default and Host check.
//
// It sits beside the request path, never on it: it reads what the other
// packages expose and changes no routing. It listens on loopback unless the
// configuration says otherwise, because it shows configuration and traces,
// and for the same reason it answers only requests whose Host is an IP
// literal, localhost or an allowed name (DNS rebinding), and never shows
// header values or other secrets at /config.
package admin
