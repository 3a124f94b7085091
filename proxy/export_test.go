package proxy

// ParseGRPCTimeout is parseGRPCTimeout, for the tests of package
// proxy_test that read what the proxy sent upstream.
var ParseGRPCTimeout = parseGRPCTimeout
