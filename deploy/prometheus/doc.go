// Package prometheus holds no code: its directory holds hopwatch's
// Prometheus recording and alerting rules (rules.yaml) and their unit
// tests (rules_test.yaml), and its Go test runs promtool on both.
//
// It sits outside the request path and must never be imported.
package prometheus
