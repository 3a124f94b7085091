// Package soak holds hopwatch's fault soak: the proxy, in-process, under
// about 500 requests a second of mixed gRPC unary, gRPC server streaming
// and HTTP (plain and streamed) on loopback (the gRPC calls on a grpc-go
// listener, on an HTTP listener, and on a frame-relay listener, plain and
// through a route with a retry policy), while its upstreams reset
// connections, stall mid-stream, send garbage, close after their headers,
// and vanish and come back, and its clients cancel at every stage.
//
// It checks that every call ends cleanly (a status from the expected set
// for what was done to it), that nothing outlives its deadline, that the
// breakers and outlier ejection let traffic through again once the faults
// stop, and that the process's goroutines and live heap do not grow: both
// are sampled every 10 s and their least-squares slope is reported and
// bounded.
//
// It sits outside the request path and has no non-test code. It runs only
// when HOPWATCH_SOAK is set to a duration (make soak: 10m; .ci/run: 60s),
// so `make test` skips it.
package soak
