package proxy

import "time"

// ParseGRPCTimeout is parseGRPCTimeout, for the tests of package
// proxy_test that read what the proxy sent upstream.
var ParseGRPCTimeout = parseGRPCTimeout

// SetRelayKeepalive shortens the keepalive of relay listeners' client
// connections; call it before Apply.
func SetRelayKeepalive(p *Proxy, every, timeout time.Duration) {
	p.relayPing = [2]time.Duration{every, timeout}
}

// SetPingMinTime sets how often clients of gRPC listeners (both kinds) may
// ping before they are told "too_many_pings"; call it before Apply.
func SetPingMinTime(p *Proxy, d time.Duration) {
	p.pingMinTime = d
}
