package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httputil"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// Options are the proxy's injected dependencies.
type Options struct {
	// Logger receives operational events (reloads, listener changes,
	// upstream errors that nobody else sees). Default: slog.Default().
	Logger *slog.Logger
	// Now is the clock (tests inject one). Default: time.Now.
	Now func() time.Time
	// DrainTimeout bounds how long a listener removed by a reload keeps
	// serving the calls it already has. Default: 30s.
	DrainTimeout time.Duration
	// Telemetry times every hop; nil records nothing (benchmarks compare).
	Telemetry *telemetry.Telemetry
	// FirstResponseTimeout bounds the wait for the upstream's response to
	// start on routes without a written timeout. Default:
	// routes.DefaultFirstResponseTimeout (tests shorten it).
	FirstResponseTimeout time.Duration
	// CertRecheck is how often, at most, a TLS listener's handshakes look
	// at whether its certificate files changed. Default: 1s (tests
	// shorten it).
	CertRecheck time.Duration
	// Resolver looks up the names of DNS endpoints. Default:
	// SystemResolver{} (tests point one at their own DNS server).
	Resolver Resolver
}

// ErrClosed is returned by Apply after Shutdown.
var ErrClosed = errors.New("proxy is shut down")

// PartialError is returned by Apply when the new configuration was swapped
// in but some listeners could not be started: those whose address was held
// by a listener the same reload replaced, and which failed to bind once it
// was released. Every other Apply error means nothing changed.
type PartialError struct {
	Listeners []error
}

func (e *PartialError) Error() string {
	return "configuration applied, but listeners failed to start: " + errors.Join(e.Listeners...).Error()
}

func (e *PartialError) Unwrap() []error { return e.Listeners }

// Proxy forwards gRPC and HTTP traffic according to the current
// configuration generation.
type Proxy struct {
	log          *slog.Logger
	tel          *telemetry.Telemetry
	bufs         *bufferPool
	now          func() time.Time
	drainTimeout time.Duration
	firstResp    time.Duration // Options.FirstResponseTimeout
	certRecheck  time.Duration // Options.CertRecheck
	// relayPing is the keepalive of relay client connections: ping after
	// [0] of silence, close if nothing arrives within [1] (tests shorten it).
	relayPing [2]time.Duration
	// pingMinTime is how often clients of gRPC listeners may ping
	// (keepaliveMinTime; tests shorten it).
	pingMinTime time.Duration

	cur atomic.Pointer[generation]

	// ctx is canceled at the end of Shutdown; it is the base context of
	// every HTTP request, so that hijacked (WebSocket) connections, which
	// http.Server.Shutdown does not track, end too.
	ctx  context.Context
	stop context.CancelFunc

	// applying serializes Apply calls, DNS resolution of a new
	// configuration included; it is taken before mu.
	applying sync.Mutex
	// dns keeps DNS endpoints resolved and rediscovers on change.
	dns *discovery

	mu sync.Mutex // serializes Apply, rediscover and Shutdown; guards the fields below
	// written and table are the configuration last applied, as written
	// (endpoints unresolved), for rediscover.
	written   *routes.Spec
	table     *routes.Table
	listeners map[string]*listener
	// unbound are listeners of the applied configuration whose deferred
	// bind failed (the Apply that swapped them in returned a
	// PartialError): later applies with the same spec retry them as
	// deferred, best effort, rather than fail on them, so that a busy
	// port does not freeze DNS rediscovery and xDS updates.
	unbound map[string]routes.Listener
	ups     map[string]*upstream
	res     map[string]*resilience
	// replay is the process-wide budget of request bytes kept for
	// retries and fallbacks (replay.max_bytes); shared by every route.
	replay  *fallback.Memory
	closed  bool
	serving sync.WaitGroup // Serve loops and background drains
}

// New returns a proxy with no listeners; Apply gives it a configuration.
func New(opts Options) *Proxy {
	p := &Proxy{
		log:          opts.Logger,
		now:          opts.Now,
		drainTimeout: opts.DrainTimeout,
		tel:          opts.Telemetry,
		bufs:         newBufferPool(),
		listeners:    map[string]*listener{},
		ups:          map[string]*upstream{},
		res:          map[string]*resilience{},
	}
	p.replay = fallback.NewMemory(routes.DefaultReplayMaxBytes, p.tel.ReplayBytes)
	p.tel.WatchListeners(p.listenerCounts)
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.drainTimeout <= 0 {
		p.drainTimeout = 30 * time.Second
	}
	p.relayPing = [2]time.Duration{keepaliveTime, keepaliveTimeout}
	p.pingMinTime = keepaliveMinTime
	if p.firstResp = opts.FirstResponseTimeout; p.firstResp <= 0 {
		p.firstResp = routes.DefaultFirstResponseTimeout
	}
	if p.certRecheck = opts.CertRecheck; p.certRecheck <= 0 {
		p.certRecheck = defaultCertRecheck
	}
	p.ctx, p.stop = context.WithCancel(context.Background())
	p.dns = newDiscovery(opts.Resolver, p.tel, p.log, p.rediscover)
	empty, _ := routes.Compile(&routes.Spec{})
	p.cur.Store(&generation{table: empty, onDrained: func() {}})
	return p
}

// route is one compiled route with what forwarding it needs.
type route struct {
	spec routes.Route
	up   *upstream
	alt  *upstream              // fallback upstream, if the policy names one
	res  *resilience            // retry and fallback; nil without a policy
	http *httputil.ReverseProxy // nil on gRPC listeners
	tel  *telemetry.Route       // nil without telemetry
}

// listenerConf is what a request needs from its listener's configuration.
type listenerConf struct {
	// caller is fixed for the listener, or read from callerHeader.
	caller       string
	callerHeader string // lowercase
	// fromCert: the caller is the verified client certificate's identity
	// (caller_from: client_cert).
	fromCert bool
}

// callerOf names the calling service of a request (bounded later by the
// telemetry route against the configured callers); cs is the TLS state of
// its connection (nil: cleartext).
func (l listenerConf) callerOf(h routes.Header, cs *tls.ConnectionState) string {
	if l.fromCert {
		return certCaller(cs)
	}
	if l.callerHeader != "" {
		if c := h.Get(l.callerHeader); c != "" {
			return c
		}
	}
	return l.caller
}

// generation is one applied configuration. Requests hold a reference from
// start to end; a retired generation releases its upstream pools when the
// last request on it ends.
type generation struct {
	table     *routes.Table
	routes    []*route
	held      []held // upstreams and resilience states, released when drained
	listeners map[string]listenerConf

	refs      atomic.Int64
	retired   atomic.Bool
	drained   sync.Once
	onDrained func()
}

// acquire returns the current generation with a reference held. The
// re-check after the increment closes the race with a concurrent swap: a
// generation is only used if it was still current once referenced.
func (p *Proxy) acquire() *generation {
	for {
		g := p.cur.Load()
		g.refs.Add(1)
		if p.cur.Load() == g {
			return g
		}
		g.release()
	}
}

func (g *generation) release() {
	if g.refs.Add(-1) == 0 && g.retired.Load() {
		g.drained.Do(g.onDrained)
	}
}

func (g *generation) retire() {
	g.retired.Store(true)
	if g.refs.Load() == 0 {
		g.drained.Do(g.onDrained)
	}
}

// Apply builds a complete new generation from spec and swaps it in. On any
// error nothing changes: the previous configuration keeps serving. DNS
// endpoints are resolved first (a name that does not resolve yet gives no
// endpoint until it does), and then kept resolved until the next Apply.
func (p *Proxy) Apply(spec *routes.Spec) error {
	table, err := routes.Compile(spec)
	if err != nil {
		return err
	}
	p.applying.Lock()
	defer p.applying.Unlock()
	added := p.dns.prepare(spec) // network: before mu
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.dns.abort(added)
		return ErrClosed
	}
	err = p.apply(spec, table)
	var partial *PartialError
	if err != nil && !errors.As(err, &partial) {
		p.dns.abort(added)
		return err
	}
	p.dns.commit(spec)
	p.written, p.table = spec, table
	return err
}

// rediscover builds a new generation of the applied configuration over
// the endpoint sets DNS discovery has now; only the upstreams whose set
// changed get a successor, everything else is kept.
func (p *Proxy) rediscover() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.written == nil {
		return
	}
	if err := p.apply(p.written, p.table); err != nil {
		p.log.Warn("new DNS endpoints not applied", "error", err)
	}
}

// apply builds and swaps in the generation of spec; p.mu is held.
func (p *Proxy) apply(spec *routes.Spec, table *routes.Table) error {
	// Build everything first; until the swap, a failure undoes what was
	// built and the previous configuration keeps serving.
	pl := &applyPlan{spec: spec, table: table, eps: p.dns.endpoints(spec)}
	if err := p.planUpstreams(pl); err != nil {
		pl.abort()
		return err
	}
	if err := p.planListeners(pl); err != nil {
		pl.abort()
		return err
	}
	p.planResilience(pl)
	g := p.buildGeneration(pl)

	p.cur.Swap(g).retire()
	p.ups = pl.ups
	p.res = pl.res
	return p.startListeners(pl)
}

// applyPlan is one reload being built: what Apply keeps from the current
// configuration, what it builds anew, and what it binds, before anything
// is swapped in.
type applyPlan struct {
	spec  *routes.Spec
	table *routes.Table
	eps   map[string][]resolvedEndpoint // each upstream's endpoint set, by name

	ups   map[string]*upstream // by name: kept or built
	built []*upstream          // built by this plan: closed if it fails

	listeners map[string]routes.Listener // the new specs, by name
	keep      map[string]*listener       // unchanged: socket and connections kept
	fresh     []*listener                // bound, not serving yet
	deferred  []*listener                // to bind once a replaced listener lets go of the address

	res map[string]*resilience // by route: kept or built
}

// abort undoes a plan that will not be applied.
func (pl *applyPlan) abort() {
	for _, l := range pl.fresh {
		l.discard()
	}
	for _, l := range pl.deferred {
		l.discard()
	}
	for _, u := range pl.built {
		u.close()
	}
}

// planUpstreams keeps identical pools (warm connections), builds
// successors of those whose endpoint set alone changed, and builds the
// others.
func (p *Proxy) planUpstreams(pl *applyPlan) error {
	pl.ups = make(map[string]*upstream, len(pl.spec.Upstreams))
	for _, us := range pl.spec.Upstreams {
		eps := pl.eps[us.Name]
		old := p.ups[us.Name]
		if old != nil && old.sameSpec(us, eps) {
			pl.ups[us.Name] = old
			continue
		}
		u, err := buildUpstream(us, eps, old, p.now, p.tel, p.log, p.certRecheck)
		if err != nil {
			return err
		}
		pl.ups[us.Name] = u
		pl.built = append(pl.built, u)
	}
	return nil
}

// planListeners keeps listeners whose spec is unchanged (their handlers
// read the new generation per request) and binds the new ones, except
// those whose address a replaced listener still holds: they are bound
// once it has let go (startListeners).
func (p *Proxy) planListeners(pl *applyPlan) error {
	pl.listeners = make(map[string]routes.Listener, len(pl.spec.Listeners))
	for _, ls := range pl.spec.Listeners {
		pl.listeners[ls.Name] = ls
	}
	pl.keep = map[string]*listener{}
	held := map[string]bool{} // addresses of listeners that will be stopped
	for name, l := range p.listeners {
		if ls, ok := pl.listeners[name]; ok && l.sameSpec(ls) {
			pl.keep[name] = l
		} else {
			held[l.spec.Address] = true
		}
	}
	for _, ls := range pl.spec.Listeners {
		if _, ok := pl.keep[ls.Name]; ok {
			continue
		}
		l, err := p.newListener(ls)
		if err != nil {
			return err
		}
		if u, ok := p.unbound[ls.Name]; held[ls.Address] || ok && reflect.DeepEqual(u, ls) {
			pl.deferred = append(pl.deferred, l)
			continue
		}
		if err := l.bind(); err != nil {
			l.discard()
			return err
		}
		pl.fresh = append(pl.fresh, l)
	}
	return nil
}

// planResilience keeps the routes' retry and fallback states whose policy,
// listener, match and upstream are unchanged (warm caches, budgets), and
// builds the others.
func (p *Proxy) planResilience(pl *applyPlan) {
	spec := pl.spec
	p.replay.SetLimit(cmp.Or(spec.Replay.MaxBytes, routes.DefaultReplayMaxBytes))
	maxRequest := cmp.Or(spec.Replay.MaxRequestBytes, routes.DefaultReplayMaxRequestBytes)
	upSpecs := make(map[string]routes.Upstream, len(spec.Upstreams))
	for _, us := range spec.Upstreams {
		upSpecs[us.Name] = us
	}
	pl.res = map[string]*resilience{}
	for _, rs := range spec.Routes {
		if !needsResilience(rs) {
			continue
		}
		up := upSpecs[rs.Upstream]
		switch old, ok := p.res[rs.Name]; {
		case ok && old.same(rs, up) && old.maxRequest == maxRequest && old.sameEndpoints(up):
			pl.res[rs.Name] = old
		case ok && old.same(rs, up) && old.maxRequest == maxRequest:
			pl.res[rs.Name] = old.successor(up) // other endpoints: a fresh cache only
		default:
			pl.res[rs.Name] = newResilience(rs, up, p.now, p.replay, maxRequest)
		}
	}
}

// buildGeneration assembles the generation of the plan: its routes, and
// a reference on everything it shares with other generations.
func (p *Proxy) buildGeneration(pl *applyPlan) *generation {
	g := &generation{table: pl.table, listeners: map[string]listenerConf{}}
	for _, r := range pl.res {
		r.hold()
		g.held = append(g.held, r)
	}
	for _, u := range pl.ups {
		u.hold()
		g.held = append(g.held, u)
	}
	for _, ls := range pl.spec.Listeners {
		g.listeners[ls.Name] = listenerConf{caller: ls.Caller, callerHeader: strings.ToLower(ls.CallerHeader),
			fromCert: ls.CallerFrom == routes.CallerFromClientCert}
	}
	g.onDrained = func() {
		for _, h := range g.held {
			if h.drop() {
				h.close()
			}
		}
	}
	for _, rs := range pl.spec.Routes {
		g.routes = append(g.routes, p.buildRoute(pl, rs))
	}
	return g
}

// buildRoute compiles one route of the plan with what forwarding needs.
func (p *Proxy) buildRoute(pl *applyPlan, rs routes.Route) *route {
	rt := &route{spec: rs, up: pl.ups[rs.Upstream], res: pl.res[rs.Name]}
	if rs.Fallback != nil && rs.Fallback.Upstream != "" {
		rt.alt = pl.ups[rs.Fallback.Upstream]
	}
	ls := pl.listeners[rs.Listener]
	var genai string
	if rs.GenAI != nil {
		genai = rs.GenAI.API
	}
	rt.tel = p.tel.Route(telemetry.RouteInfo{
		Name:      rs.Name,
		Upstream:  rs.Upstream,
		Listener:  rs.Listener,
		GRPC:      ls.Protocol == routes.ListenerGRPC,
		HTTPRoute: rs.Match.PathPrefix,
		GenAI:     genai,
	}, pl.spec.Callers)
	if rt.res != nil {
		rt.res.tel.Store(rt.tel)
	}
	if ls.Protocol == routes.ListenerHTTP {
		transport := &routeTransport{up: rt.up, alt: rt.alt, res: rt.res}
		rt.http = newReverseProxy(rt.up, transport, parseTrusted(ls.TrustedProxies), p.log, p.bufs)
	}
	return rt
}

// startListeners, after the swap, stops the listeners the new
// configuration no longer has (the calls they carry finish on the old
// generation, bounded by the drain timeout), binds the deferred ones and
// serves the new ones.
func (p *Proxy) startListeners(pl *applyPlan) error {
	for name, l := range p.listeners {
		if pl.keep[name] == l {
			continue
		}
		p.log.Info("listener removed, draining", "listener", name, "address", l.spec.Address)
		p.drainInBackground(l)
	}
	p.listeners = pl.keep
	p.unbound = nil
	var errs []error
	for _, l := range pl.deferred {
		if err := l.bind(); err != nil {
			l.discard()
			errs = append(errs, err)
			if p.unbound == nil {
				p.unbound = map[string]routes.Listener{}
			}
			p.unbound[l.spec.Name] = l.spec
			continue
		}
		pl.fresh = append(pl.fresh, l)
	}
	for _, l := range pl.fresh {
		p.listeners[l.spec.Name] = l
		p.serve(l)
		p.log.Info("listening", "listener", l.spec.Name, "protocol", l.spec.Protocol, "address", l.ln.Addr().String())
	}
	if len(errs) > 0 {
		return &PartialError{Listeners: errs}
	}
	return nil
}

// held is what generations share and the last one to let go closes: an
// upstream's connection pools, a route's resilience state.
type held interface {
	hold()
	drop() (last bool)
	close()
}

// shared counts the generations holding something.
type shared struct {
	mu    sync.Mutex // guards users
	users int
}

func (s *shared) hold() {
	s.mu.Lock()
	s.users++
	s.mu.Unlock()
}

func (s *shared) drop() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users--
	return s.users == 0
}

// Addr returns the bound address of a listener (useful with port 0), or nil.
func (p *Proxy) Addr(listener string) net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.listeners[listener]; ok && l.ln != nil {
		return l.ln.Addr()
	}
	return nil
}

// Shutdown stops accepting on every listener and waits for calls in flight
// to finish, until ctx is done; then it closes what is left. It returns
// ctx.Err() if the drain was cut short.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.dns.close()
	var wg sync.WaitGroup
	for _, l := range p.listeners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.drain(ctx)
		}()
	}
	p.listeners = map[string]*listener{}
	p.mu.Unlock()

	wg.Wait()
	p.dns.wait()
	p.stop() // ends hijacked connections and anything still running
	p.serving.Wait()
	p.cur.Load().retire()
	for _, u := range p.ups {
		u.close()
	}
	for _, r := range p.res {
		r.close()
	}
	if ctx.Err() != nil {
		return fmt.Errorf("drain cut short: %w", ctx.Err())
	}
	return nil
}

// drainInBackground stops l without blocking Apply; its socket is closed
// before it returns, so that its address is free for the new listeners.
func (p *Proxy) drainInBackground(l *listener) {
	l.stopAccepting()
	p.serving.Add(1)
	go func() {
		defer p.serving.Done()
		ctx, cancel := context.WithTimeout(p.ctx, p.drainTimeout)
		defer cancel()
		l.drain(ctx)
	}()
}
