// Package testkit holds the helpers that the tests of several packages
// share: waiting for a condition on real time, a logger that writes to the
// test's log, deterministic trace and span ids, reading one metric from
// a Prometheus registry, and certificates signed by a CA made for the test.
//
// It is off the request path altogether: only _test.go files may import
// it, never the proxy's own code.
package testkit
