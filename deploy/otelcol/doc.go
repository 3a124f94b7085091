// Package otelcol holds no code: its directory holds the OpenTelemetry
// Collector configuration of hopwatch's trace pipeline, and its test
// validates that file and deploy/jaeger's Jaeger v2 configurations with
// the pinned Jaeger v2 binary (a Collector distribution: its validate
// command builds every component and runs the component's own checks).
//
// It sits outside the request path and must never be imported.
package otelcol
