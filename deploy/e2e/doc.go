// Package e2e holds no code: its test runs every PromQL expression of
// deploy/'s Grafana dashboard and Prometheus rules against a real
// Prometheus scraping the real hopwatch binary, with the demo bot and
// purpose-built traffic behind it (HOPWATCH_E2E=require makes a missing
// prometheus a failure instead of a skip).
//
// It sits outside the request path and must never be imported.
package e2e
