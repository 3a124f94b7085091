package proxy

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// limits is a listener's ListenerLimits with every default filled in.
type limits struct {
	maxHeaderBytes       int
	maxConcurrentStreams int
	maxConnections       int
	idleTimeout          time.Duration
	readHeaderTimeout    time.Duration
}

func listenerLimits(l routes.ListenerLimits) limits {
	return limits{
		maxHeaderBytes:       cmp.Or(l.MaxHeaderBytes, routes.DefaultListenerMaxHeaderBytes),
		maxConcurrentStreams: cmp.Or(l.MaxConcurrentStreams, routes.DefaultMaxConcurrentStreams),
		maxConnections:       cmp.Or(l.MaxConnections, routes.DefaultMaxConnections),
		idleTimeout:          cmp.Or(l.IdleTimeout, routes.DefaultIdleTimeout),
		readHeaderTimeout:    cmp.Or(l.ReadHeaderTimeout, routes.DefaultReadHeaderTimeout),
	}
}

// Keep-alive of client connections. The server pings a connection that has
// been silent this long, and closes it when the ping is not answered in
// time, so that calls of vanished peers do not hold streams forever.
// Clients may ping as often as every keepaliveMinTime (grpc-go clients
// cannot ping more often than that anyway), also without calls in
// progress (keepalivePermitWithoutStream); more often, and the connection
// ends with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" once more than
// maxPingStrikes pings came too soon since the server last sent headers or
// data (grpc-go's keepalive.EnforcementPolicy, which the frame relay
// applies too: pingPolicy).
const (
	keepaliveTime                = time.Minute
	keepaliveTimeout             = 20 * time.Second
	keepaliveMinTime             = 10 * time.Second
	keepalivePermitWithoutStream = true
	// maxPingStrikes and noStreamPingMinTime are grpc-go's own
	// (internal/transport: maxPingStrikes, defaultPingTimeout).
	maxPingStrikes      = 2
	noStreamPingMinTime = 2 * time.Hour
)

// Rapid reset (CVE-2023-44487): a client opens streams and resets them at
// once, so that each costs the proxy a dispatched call while the client
// pays nothing and is never held back by the stream limit. grpc-go and
// net/http already run at most max_concurrent_streams handlers per
// connection; on top of that, a connection is closed once its resets show
// a flood. The policy is Envoy's "premature reset" rule (envoy PR 30055,
// min stream lifetime 1s): a stream the client resets before its handler
// ran, or within prematureResetLifetime of it starting, is premature; a
// connection is closed once prematureResetMinStreams/2 of its streams were
// premature or, after prematureResetMinStreams streams, once half of them
// were. Envoy counts from 500 streams; hopwatch from 5000, so that a
// client cancelling a thousand calls at once (users closing their chats)
// keeps its connection, while a flood is cut after a few thousand streams
// instead of running for as long as the attacker likes.
const (
	prematureResetLifetime   = time.Second
	prematureResetMinStreams = 5000
)

// ListenerStats are the connection counters of one listener, kept across
// reloads that rebuild it.
type ListenerStats struct {
	// Open is the number of client connections open now.
	Open int64
	// Refused counts connections closed at accept because the listener
	// had max_connections open.
	Refused uint64
	// ResetFloods counts connections closed for resetting too many of
	// their streams prematurely (rapid reset).
	ResetFloods uint64
	// FrameFloods counts connections closed for sending too many frames
	// that do no work (relay listeners; see relayflood.go).
	FrameFloods uint64
	// CertReloads and CertReloadErrors count reloads of the listener's
	// TLS files after they changed: loaded, or refused (the previous
	// certificate kept serving).
	CertReloads, CertReloadErrors uint64
}

// connCounters back ListenerStats; they are shared by every listener built
// under one name, so a rebuilt listener keeps counting where the old one
// left off (counters never go backwards) and the gauge covers connections
// of a listener still draining.
type connCounters struct {
	open        atomic.Int64
	refused     atomic.Uint64
	resetFloods atomic.Uint64
	frameFloods atomic.Uint64
	certOK      atomic.Uint64
	certFailed  atomic.Uint64
}

func (c *connCounters) stats() ListenerStats {
	return ListenerStats{Open: c.open.Load(), Refused: c.refused.Load(), ResetFloods: c.resetFloods.Load(),
		FrameFloods: c.frameFloods.Load(), CertReloads: c.certOK.Load(), CertReloadErrors: c.certFailed.Load()}
}

// certReloaded counts one reload of the listener's TLS files.
func (c *connCounters) certReloaded(ok bool) {
	if ok {
		c.certOK.Add(1)
	} else {
		c.certFailed.Add(1)
	}
}

// ListenerStats returns the connection counters of every listener, by name.
// They are meant for metrics (a gauge and two counters).
func (p *Proxy) ListenerStats() map[string]ListenerStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]ListenerStats, len(p.listeners))
	for name, l := range p.listeners {
		out[name] = l.guard.counters.stats()
	}
	return out
}

// listenerCounts adapts ListenerStats for telemetry's listener metrics.
func (p *Proxy) listenerCounts() map[string]telemetry.ListenerCounts {
	out := map[string]telemetry.ListenerCounts{}
	for name, s := range p.ListenerStats() {
		out[name] = telemetry.ListenerCounts{Open: s.Open, Refused: s.Refused, ResetFloods: s.ResetFloods,
			FrameFloods: s.FrameFloods, CertReloads: s.CertReloads, CertReloadErrors: s.CertReloadErrors}
	}
	return out
}

// connGuard enforces a listener's connection cap and its rapid-reset
// policy. It wraps the bound net.Listener, and finds the connection of a
// call by the peer address that both grpc-go and net/http report.
type connGuard struct {
	listener string
	max      int
	counters *connCounters
	log      *slog.Logger
	now      func() time.Time

	open         atomic.Int64 // connections of this socket, against max
	lastLog      atomic.Int64 // unix nanoseconds of the last refusal logged
	lastFloodLog atomic.Int64 // unix nanoseconds of the last frame flood logged

	// conns maps a peer address to its open connection: written once per
	// connection, read once per call, which is what sync.Map is for.
	conns sync.Map // string → *guardedConn
}

func newConnGuard(listener string, max int, counters *connCounters, log *slog.Logger, now func() time.Time) *connGuard {
	return &connGuard{listener: listener, max: max, counters: counters, log: log, now: now}
}

// wrap returns ln with the guard in front of its Accept.
func (g *connGuard) wrap(ln net.Listener) net.Listener { return &guardedListener{Listener: ln, g: g} }

type guardedListener struct {
	net.Listener
	g *connGuard
}

// Accept returns the next connection within the cap. One beyond it is
// accepted and closed at once rather than left in the kernel's backlog:
// the client learns right away and can go elsewhere, and a flood of
// connections never reaches the HTTP/2 handshake (buffers, goroutines).
// Accept does not return an error for it, since both grpc-go and net/http
// treat Accept errors as the listener's failure.
func (l *guardedListener) Accept() (net.Conn, error) {
	g := l.g
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if g.open.Add(1) > int64(g.max) {
			g.open.Add(-1)
			// Counted before the close, which the client sees at once.
			g.counters.refused.Add(1)
			c.Close()
			g.logRefused(c.RemoteAddr())
			continue
		}
		g.counters.open.Add(1)
		gc := &guardedConn{Conn: c, g: g, key: c.RemoteAddr().String()}
		g.conns.Store(gc.key, gc)
		return gc, nil
	}
}

// logRefused logs a refused connection at most once a second: under a
// connection flood the log must not become the next resource exhausted.
func (g *connGuard) logRefused(remote net.Addr) {
	now := g.now().UnixNano()
	last := g.lastLog.Load()
	if now-last < int64(time.Second) || !g.lastLog.CompareAndSwap(last, now) {
		return
	}
	g.log.Warn("connection refused: listener at max_connections", "listener", g.listener,
		"max_connections", g.max, "remote", remote.String(), "refused_total", g.counters.refused.Load())
}

// conn finds the open connection a call arrived on (nil if it is gone).
func (g *connGuard) conn(remoteAddr string) *guardedConn {
	c, _ := g.conns.Load(remoteAddr)
	gc, _ := c.(*guardedConn)
	return gc
}

// guardedConn is one accepted connection with its stream accounting.
type guardedConn struct {
	net.Conn
	g    *connGuard
	key  string
	once sync.Once

	streams   atomic.Int64
	premature atomic.Int64
	tripped   atomic.Bool
}

func (c *guardedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.g.conns.CompareAndDelete(c.key, c)
		c.g.open.Add(-1)
		c.g.counters.open.Add(-1)
	})
	return err
}

// callEnded accounts one finished stream of the connection and closes the
// connection when its streams show a rapid-reset flood.
func (c *guardedConn) callEnded(premature bool) {
	if c == nil {
		return
	}
	total := c.streams.Add(1)
	if !premature {
		return
	}
	n := c.premature.Add(1)
	if total < prematureResetMinStreams && n*2 < prematureResetMinStreams || total >= prematureResetMinStreams && n*2 < total {
		return
	}
	if c.tripped.Swap(true) {
		return
	}
	c.g.counters.resetFloods.Add(1)
	c.g.log.Warn("connection closed: too many streams reset by the client (rapid reset)", "listener", c.g.listener,
		"remote", c.key, "streams", total, "premature_resets", n)
	// Closing the socket ends the connection's transport (grpc-go's or
	// net/http's), which cancels every stream on it; other connections are
	// not touched.
	c.Close()
}

// isPremature reports whether a call whose handler began at start and
// ends now was reset by its client early (a deadline is not a reset).
func isPremature(ctx context.Context, start, now time.Time) bool {
	return errors.Is(ctx.Err(), context.Canceled) && now.Sub(start) < prematureResetLifetime
}

// resetGuardHandler applies the rapid-reset policy to HTTP/2 requests of
// an http listener (HTTP/1 cannot reset a request without closing its
// connection). net/http has a mitigation of its own (it closes a
// connection whose reset handlers queue up beyond four times the stream
// limit), which only trips when handlers are slower than the flood.
type resetGuardHandler struct {
	next  http.Handler
	guard *connGuard
	now   func() time.Time
}

func (h resetGuardHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 2 {
		h.next.ServeHTTP(w, r)
		return
	}
	c := h.guard.conn(r.RemoteAddr)
	start := h.now()
	if err := r.Context().Err(); err != nil {
		// Reset (or expired) before its handler ran: nothing to forward.
		c.callEnded(errors.Is(err, context.Canceled))
		return
	}
	h.next.ServeHTTP(w, r)
	c.callEnded(isPremature(r.Context(), start, h.now()))
}
