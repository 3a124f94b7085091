package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httputil"
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

	cur atomic.Pointer[generation]

	// ctx is canceled at the end of Shutdown; it is the base context of
	// every HTTP request, so that hijacked (WebSocket) connections, which
	// http.Server.Shutdown does not track, end too.
	ctx  context.Context
	stop context.CancelFunc

	mu        sync.Mutex // serializes Apply and Shutdown; guards the fields below
	listeners map[string]*listener
	ups       map[string]*upstream
	res       map[string]*resilience
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
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.drainTimeout <= 0 {
		p.drainTimeout = 30 * time.Second
	}
	p.ctx, p.stop = context.WithCancel(context.Background())
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
}

// callerOf names the calling service of a request (bounded later by the
// telemetry route against the configured callers).
func (l listenerConf) callerOf(h routes.Header) string {
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
// error nothing changes: the previous configuration keeps serving.
func (p *Proxy) Apply(spec *routes.Spec) error {
	table, err := routes.Compile(spec)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}

	// Upstreams: keep identical pools (warm connections), build new ones.
	ups := make(map[string]*upstream, len(spec.Upstreams))
	var built []*upstream
	fail := func(err error) error {
		for _, u := range built {
			u.close()
		}
		return err
	}
	for _, us := range spec.Upstreams {
		if old, ok := p.ups[us.Name]; ok && old.sameSpec(us) {
			ups[us.Name] = old
			continue
		}
		u, err := newUpstream(us, p.now, p.tel)
		if err != nil {
			return fail(err)
		}
		ups[us.Name] = u
		built = append(built, u)
	}

	// Listeners: a listener whose spec is unchanged keeps its socket and
	// connections; its handler reads the new generation per request.
	specs := make(map[string]routes.Listener, len(spec.Listeners))
	for _, ls := range spec.Listeners {
		specs[ls.Name] = ls
	}
	keep := map[string]*listener{}
	var fresh, deferred []*listener
	held := map[string]bool{} // addresses of listeners that will be stopped
	for name, l := range p.listeners {
		if ls, ok := specs[name]; ok && l.sameSpec(ls) {
			keep[name] = l
		} else {
			held[l.spec.Address] = true
		}
	}
	closeFresh := func() {
		for _, l := range fresh {
			l.ln.Close()
		}
	}
	for _, ls := range spec.Listeners {
		if _, ok := keep[ls.Name]; ok {
			continue
		}
		l := p.newListener(ls)
		if held[ls.Address] {
			// The address is still held by a listener this reload
			// replaces: bind once that one has let go.
			deferred = append(deferred, l)
			continue
		}
		if err := l.bind(); err != nil {
			closeFresh()
			return fail(err)
		}
		fresh = append(fresh, l)
	}

	// Route resilience: keep unchanged policies (warm caches, budgets).
	p.replay.SetLimit(cmp.Or(spec.Replay.MaxBytes, routes.DefaultReplayMaxBytes))
	maxRequest := cmp.Or(spec.Replay.MaxRequestBytes, routes.DefaultReplayMaxRequestBytes)
	upSpecs := make(map[string]routes.Upstream, len(spec.Upstreams))
	for _, us := range spec.Upstreams {
		upSpecs[us.Name] = us
	}
	ress := map[string]*resilience{}
	for _, rs := range spec.Routes {
		if !needsResilience(rs) {
			continue
		}
		if old, ok := p.res[rs.Name]; ok && old.same(rs, upSpecs[rs.Upstream]) && old.maxRequest == maxRequest {
			ress[rs.Name] = old
		} else {
			ress[rs.Name] = newResilience(rs, upSpecs[rs.Upstream], p.now, p.replay, maxRequest)
		}
	}

	g := &generation{table: table, listeners: map[string]listenerConf{}}
	for _, r := range ress {
		r.hold()
		g.held = append(g.held, r)
	}
	for _, u := range ups {
		u.hold()
		g.held = append(g.held, u)
	}
	for _, ls := range spec.Listeners {
		g.listeners[ls.Name] = listenerConf{caller: ls.Caller, callerHeader: strings.ToLower(ls.CallerHeader)}
	}
	g.onDrained = func() {
		for _, h := range g.held {
			if h.drop() {
				h.close()
			}
		}
	}
	for _, rs := range spec.Routes {
		rt := &route{spec: rs, up: ups[rs.Upstream], res: ress[rs.Name]}
		if rs.Fallback != nil && rs.Fallback.Upstream != "" {
			rt.alt = ups[rs.Fallback.Upstream]
		}
		ls := specs[rs.Listener]
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
		}, spec.Callers)
		if rt.res != nil {
			rt.res.tel.Store(rt.tel)
		}
		if ls.Protocol == routes.ListenerHTTP {
			transport := &routeTransport{up: rt.up, alt: rt.alt, res: rt.res}
			rt.http = newReverseProxy(rt.up, transport, parseTrusted(ls.TrustedProxies), p.log, p.bufs)
		}
		g.routes = append(g.routes, rt)
	}

	old := p.cur.Swap(g)
	old.retire()
	p.ups = ups
	p.res = ress

	// Stop what the new configuration no longer has; the calls they carry
	// finish on the old generation, bounded by the drain timeout.
	for name, l := range p.listeners {
		if keep[name] == l {
			continue
		}
		p.log.Info("listener removed, draining", "listener", name, "address", l.spec.Address)
		p.drainInBackground(l)
	}
	p.listeners = keep
	var errs []error
	for _, l := range deferred {
		if err := l.bind(); err != nil {
			errs = append(errs, err)
			continue
		}
		fresh = append(fresh, l)
	}
	for _, l := range fresh {
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

// drainInBackground stops l without blocking Apply.
func (p *Proxy) drainInBackground(l *listener) {
	p.serving.Add(1)
	go func() {
		defer p.serving.Done()
		ctx, cancel := context.WithTimeout(p.ctx, p.drainTimeout)
		defer cancel()
		l.drain(ctx)
	}()
}
