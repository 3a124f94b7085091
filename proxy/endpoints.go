package proxy

import (
	"net/http"
	"sync"

	"google.golang.org/grpc"

	"github.com/hopwatch/hopwatch/routes"
)

// resolvedEndpoint is one address an upstream balances over: an endpoint
// as written, or one A/AAAA address of a DNS endpoint.
type resolvedEndpoint struct {
	addr string // dialed
	// authority is the endpoint as written (host:port) when addr is one
	// of its resolved addresses, "" otherwise.
	authority string
}

// staticEndpoints is spec's endpoint set when nothing is resolved.
func staticEndpoints(spec routes.Upstream) []resolvedEndpoint {
	eps := make([]resolvedEndpoint, len(spec.Endpoints))
	for i, ep := range spec.Endpoints {
		eps[i] = resolvedEndpoint{addr: ep}
	}
	return eps
}

// upstreamPool owns the connections of one upstream across the endpoint
// set changes of its successors: a ClientConn per endpoint, closed when no
// upstream object uses that endpoint any more (the generations that used
// it have drained), and the HTTP transport.
type upstreamPool struct {
	conf      upstreamConnConf
	transport *http.Transport

	mu    sync.Mutex // guards the fields below
	conns map[resolvedEndpoint]*pooledConn
	users int
}

type pooledConn struct {
	cc    *grpc.ClientConn
	relay *relayClient // for relay listeners; dials on first use
	refs  int
}

func newUpstreamPool(c upstreamConnConf, t *http.Transport) *upstreamPool {
	return &upstreamPool{conf: c, transport: t, conns: map[resolvedEndpoint]*pooledConn{}}
}

func (p *upstreamPool) addUser() {
	p.mu.Lock()
	p.users++
	p.mu.Unlock()
}

// acquire returns the ClientConn of re, shared with the other upstream
// objects that have re, or a new one.
func (p *upstreamPool) acquire(re resolvedEndpoint) (*grpc.ClientConn, *relayClient, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc, ok := p.conns[re]; ok {
		pc.refs++
		return pc.cc, pc.relay, nil
	}
	cc, err := p.conf.grpcClient(re.addr, re.authority)
	if err != nil {
		return nil, nil, err
	}
	pc := &pooledConn{cc: cc, relay: newRelayClient(re.addr, re.authority, p.conf), refs: 1}
	p.conns[re] = pc
	return cc, pc.relay, nil
}

// release gives back one user's connections (those it acquired) and the
// user itself.
func (p *upstreamPool) release(eps []resolvedEndpoint) {
	p.mu.Lock()
	var closing []*pooledConn
	for _, re := range eps {
		if pc, ok := p.conns[re]; ok {
			if pc.refs--; pc.refs == 0 {
				delete(p.conns, re)
				closing = append(closing, pc)
			}
		}
	}
	p.users--
	last := p.users == 0
	p.mu.Unlock()
	for _, pc := range closing {
		pc.cc.Close()
		pc.relay.close()
	}
	if last {
		p.transport.CloseIdleConnections()
	}
}

// carry takes over the balancing state of the same address in the
// previous endpoint set: its latency average and its down mark. Calls in
// flight stay counted on the old endpoint, which their generation still
// holds.
func (e *endpoint) carry(old *endpoint) {
	old.mu.Lock()
	ewma, lastObs, downUntil, failures := old.ewma, old.lastObs, old.downUntil, old.failures
	old.mu.Unlock()
	e.mu.Lock()
	e.ewma, e.lastObs, e.downUntil, e.failures = ewma, lastObs, downUntil, failures
	e.mu.Unlock()
}
