// Package fallback holds the resilience primitives of the proxy: circuit
// breakers (Breaker), bulkheads (Bulkhead), retry budgets and backoff
// (Budget, Backoff), the last-good-response cache (Cache), the bounded queue
// that finishes late calls after the client was answered (Background), and
// passive outlier ejection (Ejector).
//
// It sits fourth on the request path: listener → routes.Table.Match → hop →
// resilience → upstream. proxy/ decides when to consult each primitive;
// these types only decide whether a request may proceed and remember what
// they need to. None of them performs I/O.
//
// It imports nothing of hopwatch's: each primitive takes its own settings
// struct (settings.go), whose zero value means the defaults defined there,
// so the primitives can be read, tested and reused without the config
// model. The package registers no metrics and imports no telemetry: what is worth
// observing (breaker transitions, background queue depth, ejections) comes
// back through hook funcs and return values, so that one package owns the
// metric names. Types that depend on time take it as an argument or an
// injected clock, which keeps tests exact; the exception is the open
// timeout of Breaker, which sony/gobreaker measures with time.Now. No type
// keeps global state, and the only goroutines started here are Background's,
// each bounded by a timeout and canceled by Close.
package fallback
