package proxy

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/fallback"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// upstream is the connection pool and balancer of one configured upstream.
// It is shared by every generation whose spec for it is identical, so a
// reload that does not touch an upstream keeps its warm connections. When
// only its endpoint set changes (DNS or xDS discovery), the next generation
// gets a successor that shares its breaker, bulkhead, transport and the
// connections of the endpoints that remain (see successor).
type upstream struct {
	spec routes.Upstream
	// resolved is the endpoint set, as dialed: the written endpoints, DNS
	// names replaced by their addresses.
	resolved []resolvedEndpoint
	eps      []*endpoint
	bal      balancer
	now      func() time.Time

	// conns holds one long-lived ClientConn per endpoint, used by gRPC
	// listeners (for grpc and h2c upstreams). grpc.NewClient does not
	// connect until the first call, so unused ones cost nothing.
	conns []*grpc.ClientConn
	// relays are the frame relay's connections to the same endpoints
	// (relay listeners, relay.go); they too dial on first use.
	relays []*relayClient
	// transport carries HTTP listener traffic: HTTP/1.1 keep-alive for
	// "http", prior-knowledge HTTP/2 for "h2c" and "grpc", HTTP/2 by ALPN
	// for "h2" and TLS "grpc".
	transport *http.Transport
	// tls: the endpoints are reached over TLS (https URLs).
	tls bool
	// pool owns conns and transport, shared with predecessors and
	// successors; closeOnce releases this upstream's share of it.
	pool      *upstreamPool
	closeOnce sync.Once

	// breaker and bulkhead gate every request (nil: not configured).
	breaker  *fallback.Breaker
	bulkhead *fallback.Bulkhead
	// ejector takes endpoints that keep failing out of rotation for a
	// growing period (passive outlier detection, always on).
	ejector *fallback.Ejector

	shared // generations holding this upstream
}

// buildUpstream builds the pool of spec over the endpoint set eps, as the
// successor of prev when prev differs from it in endpoints only.
func buildUpstream(spec routes.Upstream, eps []resolvedEndpoint, prev *upstream, now func() time.Time, tel *telemetry.Telemetry, log *slog.Logger, certRecheck time.Duration) (*upstream, error) {
	if prev != nil && prev.sameButEndpoints(spec) {
		return prev.successor(spec, eps)
	}
	tlsConf, err := upstreamTLSConfig(spec, log, now, certRecheck)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", spec.Name, err)
	}
	if tlsConf != nil && tlsConf.ServerName == "" && !tlsConf.InsecureSkipVerify && spec.UsesDNS() {
		// Resolved endpoints are dialed by address; the certificate
		// names the host as written.
		tlsConf.ServerName = spec.DNSServerName()
	}
	u := &upstream{spec: spec, now: now, tls: tlsConf != nil}
	if spec.Breaker != nil {
		tel.BreakerInit(spec.Name)
		u.breaker = fallback.NewBreaker(spec.Name, spec.Breaker.Settings(), func(name string, _, to fallback.State) {
			tel.BreakerChanged(name, to)
		})
	}
	if spec.MaxConcurrent > 0 {
		u.bulkhead = fallback.NewBulkhead(spec.MaxConcurrent)
	}
	c := upstreamConnConf{
		dialTimeout: cmp.Or(max(spec.DialTimeout, 0), routes.DefaultDialTimeout),
		maxMsg:      cmp.Or(max(spec.MaxMessageBytes, 0), routes.DefaultMaxMessageBytes),
		maxHeader:   cmp.Or(spec.Limits.MaxHeaderBytes, routes.DefaultUpstreamMaxHeaderBytes),
		idle:        cmp.Or(spec.Limits.IdleTimeout, routes.DefaultUpstreamIdleTimeout),
		tls:         tlsConf,
	}
	u.pool = newUpstreamPool(c, c.httpTransport(spec.Protocol))
	if err := u.setEndpoints(eps, nil); err != nil {
		return nil, err
	}
	return u, nil
}

// successor is u over another endpoint set: same breaker, bulkhead and
// transport, the connections and balancing state of the endpoints that
// remain, and their outlier ejections carried over. u keeps serving the
// requests of its generation and releases the endpoints that left once
// that generation has drained.
func (u *upstream) successor(spec routes.Upstream, eps []resolvedEndpoint) (*upstream, error) {
	n := &upstream{spec: spec, now: u.now, tls: u.tls, pool: u.pool, breaker: u.breaker, bulkhead: u.bulkhead}
	if err := n.setEndpoints(eps, u); err != nil {
		return nil, err
	}
	return n, nil
}

// setEndpoints gives a new upstream its endpoints, their connections from
// the pool, its balancer and its ejector, carrying state over from prev.
func (u *upstream) setEndpoints(eps []resolvedEndpoint, prev *upstream) error {
	u.pool.addUser()
	switch u.spec.Balance {
	case routes.BalanceRoundRobin:
		u.bal = &roundRobin{}
	default:
		u.bal = p2cEWMA{now: u.now}
	}
	u.resolved = eps
	u.ejector = fallback.NewEjector(len(eps), u.spec.Outlier.Settings())
	var from []int
	if prev != nil {
		from = make([]int, len(eps))
		for i, re := range eps {
			from[i] = prev.indexOf(re)
		}
		u.ejector.Carry(prev.ejector, from)
	}
	for i, re := range eps {
		ep := &endpoint{addr: re.addr, idx: i, authority: re.authority}
		if from != nil && from[i] >= 0 {
			ep.carry(prev.eps[from[i]])
		}
		cc, rc, err := u.pool.acquire(re)
		if err != nil {
			u.close()
			return fmt.Errorf("upstream %q endpoint %q: %w", u.spec.Name, re.addr, err)
		}
		u.eps = append(u.eps, ep)
		u.conns = append(u.conns, cc)
		u.relays = append(u.relays, rc)
	}
	u.transport = u.pool.transport
	return nil
}

// indexOf returns the index of re among u's endpoints, or -1.
func (u *upstream) indexOf(re resolvedEndpoint) int {
	for i, o := range u.resolved {
		if o == re {
			return i
		}
	}
	return -1
}

// upstreamConnConf is what an upstream's connections are built with, its
// defaults filled in.
type upstreamConnConf struct {
	dialTimeout time.Duration
	maxMsg      int
	maxHeader   int
	idle        time.Duration
	tls         *tls.Config // nil: cleartext
}

// grpcClient is the ClientConn of one endpoint, for gRPC listeners. It
// does not connect until the first call.
func (c upstreamConnConf) grpcClient(addr, authority string) (*grpc.ClientConn, error) {
	var extra []grpc.DialOption
	if authority != "" && (c.tls == nil || c.tls.ServerName == "") {
		// A resolved address is called by the name as written: the
		// :authority stays the host's. With TLS, the name to verify
		// (tls.server_name, or the DNS host) is the authority already,
		// and grpc-go refuses a second, different one.
		extra = append(extra, grpc.WithAuthority(authority))
	}
	creds := insecure.NewCredentials()
	if c.tls != nil {
		// grpc-go offers h2 by ALPN and verifies the endpoint's host
		// (or tls.server_name) against the certificate.
		creds = credentials.NewTLS(c.tls)
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(rawCodec{}),
			grpc.MaxCallRecvMsgSize(c.maxMsg),
			grpc.MaxCallSendMsgSize(c.maxMsg),
		),
		// Reconnect quickly once an endpoint is back: grpc-go's default
		// backoff grows to two minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   5 * time.Second,
			},
			MinConnectTimeout: c.dialTimeout,
		}),
		// The proxy must not retry on its own: a retry policy is a route
		// decision (and would hide failures from telemetry).
		grpc.WithDisableRetry(),
		// Response headers and trailers from the upstream are bounded like
		// a client's requests (SETTINGS_MAX_HEADER_LIST_SIZE, enforced
		// while decoding); over it the call fails INTERNAL.
		grpc.WithMaxHeaderListSize(uint32(c.maxHeader)),
		// A channel without calls for this long closes its connections
		// and reconnects on the next call.
		grpc.WithIdleTimeout(c.idle),
	}, extra...)
	return grpc.NewClient(addr, opts...)
}

// httpTransport carries HTTP listener traffic to the upstream: HTTP/1.1
// keep-alive for "http", prior-knowledge HTTP/2 for "h2c" and "grpc"; with
// TLS, HTTP/1.1 over TLS for "http" and HTTP/2 negotiated by ALPN (RFC 9113
// §3.2) for "h2" and "grpc", never falling back to HTTP/1.1.
func (c upstreamConnConf) httpTransport(protocol string) *http.Transport {
	dialer := &net.Dialer{Timeout: c.dialTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConns:        0, // per-host limit below is what matters
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     c.idle,
		// HTTP/1 response header bytes and the HTTP/2 header list size
		// (advertised and enforced while decoding, trailers included).
		MaxResponseHeaderBytes: int64(c.maxHeader),
		// Transparency: never add Accept-Encoding nor decompress what the
		// upstream sends.
		DisableCompression:    true,
		ExpectContinueTimeout: time.Second,
	}
	t.Protocols = new(http.Protocols)
	switch {
	case protocol == routes.UpstreamHTTP:
		t.Protocols.SetHTTP1(true)
	case c.tls != nil:
		t.Protocols.SetHTTP2(true)
	default:
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	if c.tls != nil {
		t.TLSClientConfig = c.tls.Clone()
		t.TLSHandshakeTimeout = c.dialTimeout
	}
	return t
}

// sameSpec reports whether this pool can serve spec over eps unchanged.
func (u *upstream) sameSpec(spec routes.Upstream, eps []resolvedEndpoint) bool {
	return slices.Equal(u.resolved, eps) && reflect.DeepEqual(u.spec, spec)
}

// sameButEndpoints reports whether spec differs from u's in its endpoints
// at most, so that a successor can share u's state.
func (u *upstream) sameButEndpoints(spec routes.Upstream) bool {
	// With TLS and DNS on either side, the pool's TLS config verifies the
	// DNS name as written: a successor may keep it only if the new spec
	// resolves the same name (DNS to static endpoints must verify each
	// endpoint's own host again, not the old name).
	if spec.UsesTLS() && (spec.UsesDNS() || u.spec.UsesDNS()) &&
		(spec.UsesDNS() != u.spec.UsesDNS() || u.spec.DNSServerName() != spec.DNSServerName()) {
		return false
	}
	a, b := u.spec, spec
	a.Endpoints, b.Endpoints = nil, nil
	return reflect.DeepEqual(a, b)
}

// close releases u's share of the pool: the connections of endpoints no
// successor uses close, and the transport's idle connections once no
// upstream uses it. Safe to call more than once.
func (u *upstream) close() {
	u.closeOnce.Do(func() {
		if u.pool != nil {
			u.pool.release(u.resolved[:len(u.conns)])
		}
	})
}

// pickHTTP chooses an endpoint not marked down.
func (u *upstream) pickHTTP(tried uint64) int {
	now := u.now()
	return u.bal.pick(u.eps, tried, func(i int) bool { return !u.eps[i].isDown(now) && !u.ejected(i, now) })
}

// pickGRPC chooses an endpoint not marked down whose connection is not known
// to be failing.
func (u *upstream) pickGRPC(tried uint64) int {
	now := u.now()
	return u.bal.pick(u.eps, tried, func(i int) bool {
		return !u.eps[i].isDown(now) && !u.ejected(i, now) && u.conns[i].GetState() != connectivity.TransientFailure
	})
}

// errNoEndpoint is returned when every endpoint was tried and refused.
var errNoEndpoint = errors.New("no endpoint available")

// RoundTrip implements http.RoundTripper for the HTTP listener's reverse
// proxy: it picks an endpoint, and if connecting fails before anything of the
// request was sent, marks the endpoint down and tries the next one.
func (u *upstream) RoundTrip(req *http.Request) (*http.Response, error) {
	var body *sentTracker
	if req.Body != nil && req.Body != http.NoBody {
		// http.Transport closes the body on every error; the tracker keeps
		// it open so that an attempt that never connected can be repeated.
		streaming := req.ContentLength < 0 && u.spec.Protocol != routes.UpstreamHTTP
		body = newSentTracker(req.Body, streaming)
		body.length = req.ContentLength
	}
	hop := hopFrom(req.Context())
	var tried uint64
	var lastErr error
	for attempt := 0; attempt < len(u.eps); attempt++ {
		now := u.now()
		i := u.pickHTTP(tried)
		if i < 0 {
			break
		}
		tried |= 1 << min(i, 63)
		ep := u.eps[i]

		out := *req
		url := *req.URL
		url.Host = ep.addr
		if ep.authority != "" {
			out.Host = ep.authority // a resolved address: Host names the host as written
		}
		if u.tls {
			url.Scheme = "https"
		}
		out.URL = &url
		if body != nil {
			out.Body = body.attempt()
		}
		_, att := hop.Attempt(req.Context(), ep.addr)
		// out.Header is ReverseProxy's own copy of the inbound headers for
		// this request, so the attempt may write its trace context there.
		att.Inject(headerCarrier(out.Header), headerCarrier(out.Header).del)
		ep.inflight.Add(1)
		resp, err := u.transport.RoundTrip(&out)
		canceled := canceledInTime(req.Context())
		if err != nil {
			ep.inflight.Add(-1)
			lastErr = err
			att.End("", attemptOutcome(req.Context()))
			u.outcome(ep, classifyHTTP(0, err, canceled))
			if isDialError(err) {
				ep.markDown(u.now())
				if (body == nil || !body.read.Load()) && req.Context().Err() == nil {
					continue
				}
			}
			return nil, err
		}
		ep.observe(u.now(), u.now().Sub(now))
		u.outcome(ep, classifyHTTP(resp.StatusCode, nil, canceled))
		code := telemetry.HTTPCode(resp.StatusCode)
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// The body is the upgraded connection (an io.ReadWriteCloser
			// that ReverseProxy needs as such); it is not a request any more.
			ep.inflight.Add(-1)
			att.End(code, telemetry.OutcomeOK)
			return resp, nil
		}
		resp.Body = &doneBody{ReadCloser: resp.Body, ep: ep, att: att, code: code,
			outcome: telemetry.HTTPOutcome(resp.StatusCode, false), ctx: req.Context()}
		return resp, nil
	}
	if lastErr == nil {
		lastErr = errNoEndpoint
	}
	return nil, lastErr
}

// isDialError reports whether err means no connection was made, so nothing
// of the request reached the upstream.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// sentTracker wraps the request body of one upstream call.
//
// It notes whether any of the body was read. Until then it ignores Close:
// http.Transport closes the body on every error, and an attempt that never
// connected must be repeatable with the same body.
//
// For streaming bodies to HTTP/2 upstreams it also reads through a pump
// goroutine, so that Close can end a Read that is blocked on the client. The
// HTTP/2 transport only fails a stream's response body after its request
// writer returns, and that writer sits in Read for as long as the client
// keeps its stream open and silent (a gRPC bidi call, say): without the pump
// a dead upstream would leave such a client waiting forever.
type sentTracker struct {
	r    io.ReadCloser
	read atomic.Bool
	// n counts the bytes read of a body of declared length (-1: unknown);
	// see readFor.
	n, length int64

	detach  bool // read through the pump
	started bool // pump running; only the reader touches it
	res     chan chunk
	ack     chan struct{}
	closed  chan struct{}
	once    sync.Once
	left    []byte
	leftErr error
}

type chunk struct {
	b   []byte
	err error
}

// errBodyAbandoned ends a pumped Read once the transport gave up the body.
var errBodyAbandoned = errors.New("request body abandoned by the upstream transport")

func newSentTracker(body io.ReadCloser, detach bool) *sentTracker {
	s := &sentTracker{r: body, detach: detach}
	if detach {
		s.res = make(chan chunk)
		s.ack = make(chan struct{})
		s.closed = make(chan struct{})
	}
	return s
}

// attemptBody is the tracker as one attempt's transport sees it. Its Close
// always ends that attempt's reads, even before anything was read (the
// tracker itself then stays usable by the next attempt). The HTTP/2
// transport closes the body when it aborts a stream (the upstream
// connection died), and its request writer may make its first Read only
// after that: it does not check for the abort first. That Read used to
// start the pump and wait, forever, for a client keeping its stream open
// and silent, so the client never learnt that the call had ended. (Found by
// TestGRPCCancellation "upstream goes away" on the HTTP listener, under
// load.)
type attemptBody struct {
	s    *sentTracker
	done chan struct{}
	once sync.Once
}

func (s *sentTracker) attempt() *attemptBody {
	return &attemptBody{s: s, done: make(chan struct{})}
}

func (a *attemptBody) Read(p []byte) (int, error) {
	select {
	case <-a.done:
		return 0, errBodyAbandoned
	default:
	}
	return a.s.readFor(p, a.done)
}

func (a *attemptBody) Close() error {
	a.once.Do(func() { close(a.done) })
	return a.s.Close()
}

// readFor reads for the attempt whose Close closes done.
func (s *sentTracker) readFor(p []byte, done <-chan struct{}) (int, error) {
	s.read.Store(true)
	if !s.detach {
		n, err := s.r.Read(p)
		s.n += int64(n)
		if err != nil && s.n == s.length && errors.Is(err, http.ErrBodyReadAfterClose) {
			// The whole declared body was read; only its EOF was lost. The
			// transport copies Content-Length bytes straight to the socket,
			// then reads once more (to catch extra data). In between, the
			// upstream may answer and the proxy send the response headers,
			// and net/http's HTTP/1 server closes the request body as they
			// go out: that read failed and the transport closed the
			// upstream connection mid-response, cutting streamed answers.
			// (Found by the genai demo; TestHTTPStreamedAnswerToPOST.)
			err = io.EOF
		}
		return n, err
	}
	if !s.started {
		s.started = true
		go s.pump()
	}
	if len(s.left) == 0 && s.leftErr == nil {
		select {
		case c := <-s.res:
			s.left, s.leftErr = c.b, c.err
		case <-s.closed:
			return 0, errBodyAbandoned
		case <-done:
			// Closed before this read began or while it waited; the
			// body is read from now on, so no attempt can follow.
			s.once.Do(func() { close(s.closed) })
			return 0, errBodyAbandoned
		}
	}
	n := copy(p, s.left)
	s.left = s.left[n:]
	if len(s.left) > 0 {
		return n, nil
	}
	if s.leftErr != nil {
		return n, s.leftErr
	}
	select { // the pump may reuse its buffer now
	case s.ack <- struct{}{}:
	case <-s.closed:
	}
	return n, nil
}

// pump reads the client's body with its own buffer. It ends at the body's
// end or error, or, once the transport has abandoned the body, as soon as
// its blocked Read returns (at the latest when the handler ends and the
// server closes the inbound body).
func (s *sentTracker) pump() {
	buf := make([]byte, 32<<10)
	for {
		n, err := s.r.Read(buf)
		select {
		case s.res <- chunk{buf[:n], err}:
		case <-s.closed:
			return
		}
		if err != nil {
			return
		}
		select {
		case <-s.ack:
		case <-s.closed:
			return
		}
	}
}

func (s *sentTracker) Close() error {
	if !s.read.Load() {
		return nil // the server closes the inbound body when the handler ends
	}
	if s.detach {
		s.once.Do(func() { close(s.closed) })
		return nil
	}
	return s.r.Close()
}

// doneBody ends the endpoint's in-flight count and the attempt's client
// span once the response body is finished, so long streams count as load
// and their spans cover the whole stream.
type doneBody struct {
	io.ReadCloser
	ep      *endpoint
	att     *telemetry.Attempt
	code    string
	outcome telemetry.Outcome
	ctx     context.Context
	once    sync.Once
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.done(err)
	}
	return n, err
}

func (b *doneBody) Close() error {
	b.done(nil)
	return b.ReadCloser.Close()
}

func (b *doneBody) done(err error) {
	b.once.Do(func() {
		b.ep.inflight.Add(-1)
		outcome := b.outcome
		if err != nil && !errors.Is(err, io.EOF) {
			// The stream broke after the headers: whatever the status said,
			// the exchange failed.
			outcome = attemptOutcome(b.ctx)
		}
		b.att.End(b.code, outcome)
	})
}

// attemptOutcome classifies an attempt that failed without a status.
func attemptOutcome(ctx context.Context) telemetry.Outcome {
	switch {
	case canceledInTime(ctx):
		return telemetry.OutcomeCanceled
	case ctx.Err() != nil:
		return telemetry.OutcomeTimeout
	}
	return telemetry.OutcomeError
}

// canceledInTime reports whether an attempt's context was canceled (the
// client went away, the call gave the attempt up) before its deadline.
// Past the deadline the attempt timed out, whatever its Err says: a
// context closes its Done before it cancels its children, so whoever
// cancels an attempt on seeing the call's deadline pass can get there
// first and leave Canceled in it, and a timeout would then go uncounted
// by the breaker and the outlier detector (seen under CPU load).
func canceledInTime(ctx context.Context) bool {
	if !errors.Is(ctx.Err(), context.Canceled) {
		return false
	}
	dl, ok := ctx.Deadline()
	return !ok || time.Now().Before(dl)
}

// openGRPC opens the upstream stream for method, skipping endpoints whose
// connection fails before the stream exists (nothing was sent to them). md
// is the outgoing metadata already in ctx; each attempt writes its trace
// context there. The returned attempt is still open: the caller ends it
// with the call's status.
func (u *upstream) openGRPC(ctx context.Context, hop *telemetry.Hop, md metadata.MD, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, *endpoint, *telemetry.Attempt, error) {
	var tried uint64
	var lastErr error
	for attempt := 0; attempt < len(u.eps); attempt++ {
		i := u.pickGRPC(tried)
		if i < 0 {
			break
		}
		tried |= 1 << min(i, 63)
		ep := u.eps[i]
		_, att := hop.Attempt(ctx, ep.addr)
		att.Inject(mdHeader(md), mdHeader(md).del)
		ep.inflight.Add(1)
		cs, err := u.conns[i].NewStream(ctx, desc, method, opts...)
		if err == nil {
			return cs, ep, att, nil
		}
		ep.inflight.Add(-1)
		lastErr = err
		if ctx.Err() != nil || !isUnavailable(err) {
			return nil, nil, att, err
		}
		att.End(status.Code(err).String(), telemetry.OutcomeError)
		ep.markDown(u.now())
	}
	if lastErr == nil {
		lastErr = errNoEndpoint
	}
	return nil, nil, nil, lastErr
}

// outcome feeds passive outlier detection with one call's result at ep:
// failures the endpoint can be blamed for, or a success. Calls that say
// nothing about the endpoint (client cancellations, client errors) are
// not reported.
func (u *upstream) outcome(ep *endpoint, c classified) {
	if ep == nil || c.excluded || u.ejector == nil {
		return
	}
	u.ejector.Report(ep.idx, c.failure, u.now())
}

// ejected reports whether outlier detection has taken endpoint i out.
func (u *upstream) ejected(i int, now time.Time) bool {
	return u.ejector != nil && u.ejector.Ejected(i, now)
}

// classified is a call's result as the breaker and the ejector see it.
type classified struct{ failure, excluded bool }

func classifyHTTP(status int, err error, canceled bool) classified {
	f, ex := fallback.ClassifyHTTP(status, err, canceled)
	return classified{f, ex}
}

func classifyGRPC(code codes.Code, canceled bool) classified {
	f, ex := fallback.ClassifyGRPC(code, canceled)
	return classified{f, ex}
}
