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

// RelayIdleWorkers is how many idle workers the relay listener name keeps
// (-1: no such relay listener).
func RelayIdleWorkers(p *Proxy, name string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.listeners[name]
	if l == nil || l.relay == nil {
		return -1
	}
	return int(l.relay.idleWorkers.Load())
}
