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
