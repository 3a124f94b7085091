// Package e2e holds hopwatch's end-to-end tests against the real programs
// its users point at it: a Prometheus server that scrapes the admin
// /metrics (with promtool linting the exposition), Jaeger v2 receiving
// the proxy's spans over OTLP gRPC and OTLP HTTP, and a ClickHouse server
// that rebuilds conversation session outcomes from hopwatch's events with
// the README's query (run against the demo bot behind the real cmd/proxy
// binary, which the test builds).
//
// Two conformance tests run hopwatch's listeners against outside test
// programs: TestH2Spec runs h2spec (HTTP/2, RFC 9113 and HPACK) against
// the HTTP listener over h2c and over TLS, the gRPC listener, and a plain
// grpc-go server for comparison, and TestInterop runs grpc-go's interop
// client against its interop server through every listener × upstream
// protocol that carries gRPC. make e2e-tools installs both programs
// (h2spec at bin/tools/h2spec, the interop programs at bin/).
//
// It sits outside the request path: the tests build a real three-hop bot
// chain in-process (client → chat → gateway, then gateway → nlu over gRPC
// and gateway → kb over HTTP, every hop through hopwatch) and check what
// the outside programs make of its telemetry. There is no non-test code.
//
// Jaeger v2 rather than a bare OpenTelemetry Collector: it is a Collector
// distribution (the same OTLP receivers), and it also stores the spans and
// answers a query API, so a test can read a whole trace back and check its
// parent links instead of parsing an exporter's file.
//
// Programs are found on PATH (prometheus, promtool, clickhouse-server) or, for jaeger, at
// $HOPWATCH_JAEGER, then bin/jaeger at the module root (built from
// tools/jaeger), then PATH. A test whose program is missing skips with a
// message saying how to install it, unless HOPWATCH_E2E=require is set, as
// .ci/run does after installing them; then it fails. TestOTLPCollectorDown
// needs no program and always runs.
package e2e
