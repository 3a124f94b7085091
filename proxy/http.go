package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"

	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// ServeHTTP-side of an HTTP listener: match, then hand the request to the
// route's reverse proxy.
type httpHandler struct {
	p        *Proxy
	listener string
}

func (h httpHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	gen := h.p.acquire()
	defer gen.release()

	// Routes match the path exactly as it is forwarded (Rewrite keeps
	// In.URL's Path and RawPath, so the request line upstream carries this
	// escaped form), after refusing what an upstream could read as another
	// path (routes.CheckPath). An absolute-form target ("GET http://evil/
	// HTTP/1.1") only lends its host to Host matching: the upstream is
	// always the route's. CONNECT asks for a tunnel, which a reverse proxy
	// does not open.
	path := r.URL.EscapedPath()
	grpcReq := isGRPCRequest(r)
	if err := checkRequest(r.Method, path, grpcReq); err != nil {
		h.p.tel.Unrouted(h.listener)
		writeError(w, r, err)
		return
	}
	req := routes.Request{Host: r.Host, Path: path, Method: r.Method, Header: r.Header}
	idx := gen.table.Match(h.listener, &req)
	if idx < 0 {
		h.p.tel.Unrouted(h.listener)
		writeError(w, r, errNoRoute)
		return
	}
	rt := gen.routes[idx]
	method := httpMethod(r.Method)
	if grpcReq {
		method = r.URL.Path // the gRPC method, bounded per route by telemetry
	}
	clientCtx := r.Context()
	ctx, hop := rt.tel.Start(clientCtx, headerCarrier(r.Header), gen.listeners[h.listener].callerOf(r.Header, r.TLS), method)
	if hop != nil {
		ctx = context.WithValue(ctx, hopKey{}, hop)
	}
	if grpcReq {
		var cancelDeadline context.CancelFunc
		ctx, cancelDeadline = withGRPCDeadline(ctx, r.Header) // as grpc-go does on the gRPC listener
		defer cancelDeadline()
	}
	ctx, fr, cancel := h.bound(ctx, w, r, rt)
	defer cancel()
	r = r.WithContext(ctx)           // a shallow copy: the inbound request is untouched
	r.Body = hop.RequestBody(r.Body) // the conversation reads an entry request's JSON as it streams
	if fr != nil && r.Body != nil && r.Body != http.NoBody {
		r.Body = &touchBody{ReadCloser: r.Body, fr: fr} // on the copy
	}

	// net/http adds a Date header when the handler sets none; a nil entry
	// suppresses that, so the client sees the upstream's Date or none, as it
	// would directly. (copyHeader appends the upstream's to the nil slice.)
	w.Header()["Date"] = nil
	if grpcReq {
		// Likewise Content-Length: HTTP/2 would add "content-length: 0" to
		// a gRPC trailers-only response, which gRPC clients then show as
		// trailer metadata.
		w.Header()["Content-Length"] = nil
	}
	if hop == nil && fr == nil {
		rt.http.ServeHTTP(w, r)
		return
	}
	rec := &responseRecorder{ResponseWriter: w, hop: hop, fr: fr}
	r.Body, rec.obs = hop.ObserveHTTP(r) // byte counts, genai usage: r is our copy
	rt.http.ServeHTTP(rec, r)
	if hop == nil {
		return
	}
	hop.ResponseHeader(w.Header()) // trailers are there now: a verdict may come last
	endHTTPHop(clientCtx, hop, w.Header(), rec.status(), grpcReq)
}

// bound puts the route's time bound on the request context: a written
// timeout bounds the whole call; without one, only the wait for the
// response headers is bounded (not the stream that may follow: the
// recorder lifts the bound when they are written), counted from the
// client's last request bytes (touchBody); negative: no bound. On resilient
// routes it also hands the transport what it needs of the inbound request.
// cancel must be called when the request is over.
func (h httpHandler) bound(ctx context.Context, w http.ResponseWriter, r *http.Request, rt *route) (context.Context, *firstResponse, func()) {
	cancel := func() {}
	var fr *firstResponse
	switch {
	case rt.spec.Timeout > 0:
		ctx, cancel = context.WithTimeout(ctx, rt.spec.Timeout)
	case rt.spec.Timeout == 0:
		fr = newFirstResponse(ctx, h.p.firstResp)
		cancel = fr.release
		ctx = fr
	}
	if rt.res != nil {
		// The resilient transport buffers the body, bounding that read by
		// the route's deadline through the connection's read deadline,
		// and checks the client's own headers for credentials.
		in := inbound{rc: http.NewResponseController(w), header: r.Header}
		if fr != nil {
			in.readLimit = h.p.firstResp
		}
		ctx = context.WithValue(ctx, inboundKey{}, in)
	}
	return ctx, fr, cancel
}

// endHTTPHop ends the hop with the response's status: the gRPC status for
// gRPC over HTTP (from the trailers, or the headers of a trailers-only
// answer), else the HTTP status.
func endHTTPHop(clientCtx context.Context, hop *telemetry.Hop, h http.Header, status int, grpcReq bool) {
	canceled := errors.Is(clientCtx.Err(), context.Canceled)
	if c, ok := grpcStatus(h); grpcReq && ok {
		hop.End(c.String(), telemetry.GRPCOutcome(c, canceled))
		return
	}
	hop.End(telemetry.HTTPCode(status), telemetry.HTTPOutcome(status, canceled))
}

// hopKey carries the request's hop from ServeHTTP to the upstream
// RoundTripper, through ReverseProxy, which only passes the context on.
type hopKey struct{}

func hopFrom(ctx context.Context) *telemetry.Hop {
	h, _ := ctx.Value(hopKey{}).(*telemetry.Hop)
	return h
}

// httpMethod bounds the method label: any token is a valid HTTP method, so
// unknown ones are folded together.
func httpMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "OTHER"
}

// grpcStatus reads grpc-status from a finished gRPC response: a trailer
// (ReverseProxy writes announced trailers into the header map, unannounced
// ones with http.TrailerPrefix) or, for trailers-only responses, a header.
func grpcStatus(h http.Header) (codes.Code, bool) {
	v := h.Get("Grpc-Status")
	if v == "" {
		v = h.Get(http.TrailerPrefix + "Grpc-Status")
	}
	if v == "" {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return codes.Unknown, true
	}
	return codes.Code(n), true
}

// responseRecorder notes the status and the first byte for the hop, and
// lifts the first-response timeout (fr, nil when the route has none) once
// the response has begun. It unwraps for http.ResponseController, through
// which ReverseProxy flushes and hijacks (WebSocket upgrades), so it hides
// no capability.
type responseRecorder struct {
	http.ResponseWriter
	hop  *telemetry.Hop
	fr   *firstResponse
	obs  *telemetry.Exchange // nil-safe; sees each write after it was made
	code int
}

func (r *responseRecorder) WriteHeader(code int) {
	if r.code == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		r.code = code
		r.started()
		r.hop.ResponseHeader(r.ResponseWriter.Header())
		r.obs.WriteHeader(code, r.Header())
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *responseRecorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
		r.started()
		r.hop.ResponseHeader(r.ResponseWriter.Header())
		r.obs.WriteHeader(r.code, r.Header())
	}
	n, err := r.ResponseWriter.Write(p)
	r.obs.Write(p[:n])
	return n, err
}

func (r *responseRecorder) started() {
	r.hop.FirstByte()
	if r.fr != nil {
		r.fr.started()
	}
}

// checkRequest refuses, before routing, what must never be forwarded: a
// CONNECT, a path an upstream could read as another one, and a gRPC call
// whose path is not a method name.
func checkRequest(method, path string, grpcReq bool) error {
	if method == http.MethodConnect {
		return fmt.Errorf("%w: CONNECT is not proxied", errBadRequest)
	}
	if err := routes.CheckPath(path); err != nil {
		return fmt.Errorf("%w: %w", errBadRequest, err)
	}
	if grpcReq {
		if err := routes.CheckGRPCMethod(path); err != nil {
			return fmt.Errorf("%w: %w", errBadRequest, err)
		}
	}
	return nil
}

func (r *responseRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *responseRecorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

// newReverseProxy builds the reverse proxy of one HTTP-listener route.
func newReverseProxy(up *upstream, transport http.RoundTripper, trusted []netip.Prefix, log *slog.Logger, bufs httputil.BufferPool) *httputil.ReverseProxy {
	// The host is a placeholder: upstream.RoundTrip puts the picked
	// endpoint there. Leaving Out.Host empty makes the Host header the
	// endpoint's, as if the client had called it directly; the original
	// travels in X-Forwarded-Host.
	target := &url.URL{Scheme: "http", Host: up.spec.Name}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = ""
			if isGRPCRequest(pr.In) {
				propagateGRPCDeadline(pr.Out)
			}
			// Rewrite has already dropped Forwarded and X-Forwarded-* from
			// Out. A trusted peer's chain is kept and extended; anyone
			// else's claims are discarded.
			if isTrusted(pr.In.RemoteAddr, trusted) {
				for _, k := range []string{"Forwarded", "X-Forwarded-For"} {
					if v, ok := pr.In.Header[k]; ok {
						pr.Out.Header[k] = v
					}
				}
				pr.SetXForwarded()
				unmapForwardedFor(pr.Out.Header, pr.In.RemoteAddr)
				for _, k := range []string{"X-Forwarded-Host", "X-Forwarded-Proto"} {
					if v, ok := pr.In.Header[k]; ok {
						pr.Out.Header[k] = v
					}
				}
				return
			}
			pr.SetXForwarded()
			unmapForwardedFor(pr.Out.Header, pr.In.RemoteAddr)
		},
		Transport:  transport,
		BufferPool: bufs,
		// An HTTP/2 (h2c) upstream may send Content-Length together with
		// trailers: HTTP/2 frames trailers independently of the body
		// length, and Go's HTTP/2 server does so for short bodies. Copied
		// to an HTTP/1.1 client, that length forces identity framing,
		// which cannot carry trailers (RFC 9112 §7.1.2: only chunked
		// does), so the trailers were silently lost. Dropping the length
		// of a response that announces trailers lets the server chunk it.
		// (Found by TestHTTPTransparency "response trailers" with an
		// HTTP/1.1 client and an h2c upstream.)
		ModifyResponse: func(res *http.Response) error {
			if len(res.Trailer) > 0 {
				res.Header.Del("Content-Length")
				res.ContentLength = -1
			}
			// A gRPC stream that breaks after its headers ends with a
			// status, not an abort (grpcreset.go).
			if res.Request != nil && isGRPCRequest(res.Request) {
				res.Body = &grpcEndBody{ReadCloser: res.Body, res: res, ctx: res.Request.Context()}
			}
			return nil
		},
		// FlushInterval stays 0: ReverseProxy already flushes every write
		// of responses without a Content-Length (chunked, gRPC, streamed
		// tokens) and of text/event-stream. A negative value would also
		// flush the headers of a gRPC trailers-only response before its end,
		// splitting it into headers + empty trailers, which gRPC clients
		// reject ("server closed the stream without sending trailers").
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, errRejected) {
				hopFrom(r.Context()).Rejected(reasonOf(err))
			} else if cerr := r.Context().Err(); cerr != nil && !errors.Is(err, errBodyTimeout) {
				// The request's context ended (client gone, route or
				// first-response timeout): that is why the call failed,
				// whatever the transport saw on the way (a retry loop's
				// detached attempt reports its own cancellation). A body
				// that never came is the client's delay, not the upstream's.
				err = cerr
			} else if re, ok := asReset(err); ok && isGRPCRequest(r) && resetCode(r.Context(), re.code) == codes.DeadlineExceeded {
				// The upstream gave up at the deadline a moment before
				// the proxy's own timer fired.
				err = context.DeadlineExceeded
			}
			writeError(w, r, upstreamError(err))
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// unmapForwardedFor writes the peer's address in the X-Forwarded-For
// entry SetXForwarded appended in the form the trust check (isTrusted) and
// upstreams' allow lists compare: an IPv4 peer that reached a dual-stack
// listener as an IPv4-mapped IPv6 address (::ffff:a.b.c.d) in its IPv4
// form, and an IPv6 peer without its zone (fe80::1%eth0 names one of this
// host's interfaces, which means nothing upstream and says how this host
// is built; RFC 7239 §6 has no zones either). Both found by
// FuzzForwardedHeaders.
func unmapForwardedFor(h http.Header, remoteAddr string) {
	host, ip, ok := peerAddr(remoteAddr)
	if !ok || !ip.Is4In6() && ip.Zone() == "" {
		return
	}
	v := h["X-Forwarded-For"]
	if n := len(v); n > 0 && strings.HasSuffix(v[n-1], host) {
		v[n-1] = strings.TrimSuffix(v[n-1], host) + ip.WithZone("").Unmap().String()
	}
}

// peerAddr is the peer's address in remoteAddr, as written (host) and
// parsed (ip, zone and mapping kept).
func peerAddr(remoteAddr string) (host string, ip netip.Addr, ok bool) {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return "", netip.Addr{}, false
	}
	ip, err = netip.ParseAddr(host)
	return host, ip, err == nil
}

// isTrusted compares the peer's address without zone and mapping:
// netip.Prefix.Contains is false for any address with a zone, so a
// trusted link-local peer (fe80::1%eth0 in fe80::/10) would never be.
func isTrusted(remoteAddr string, trusted []netip.Prefix) bool {
	if len(trusted) == 0 {
		return false
	}
	_, ip, ok := peerAddr(remoteAddr)
	if !ok {
		return false
	}
	ip = ip.WithZone("").Unmap()
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// parseTrusted reads validated trusted_proxies entries: CIDRs or bare IPs.
func parseTrusted(list []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
		}
	}
	return out
}

// bufferPool recycles the 32 KiB copy buffers of every HTTP route, which
// ReverseProxy would otherwise allocate per request.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte  { return *b.p.Get().(*[]byte) }
func (b *bufferPool) Put(x []byte) { b.p.Put(&x) }
