package proxy

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// routeTransport is the RoundTripper of one HTTP-listener route: it admits
// each attempt through the upstream's breaker and bulkhead and, on routes
// with a retry or fallback policy, buffers the request and runs it as a
// call (call.go) through the httpCall adapter: replays, races and falls
// back. Putting this behind ReverseProxy's Transport seam keeps
// ReverseProxy the one place that writes responses, fallback answers
// included.
type routeTransport struct {
	up  *upstream
	alt *upstream // fallback upstream, if any
	res *resilience
}

func (t *routeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	hop := hopFrom(req.Context())
	if t.res == nil {
		return t.attempt(req)
	}
	if req.Header.Get("Upgrade") != "" {
		// A WebSocket (or other) upgrade is a connection, not an answer
		// that could be replayed or stood in for.
		return t.attempt(req)
	}
	res := t.res
	size, why := res.replayable(req)
	if why == "" && !res.mem.Reserve(size) {
		why = telemetry.ReplayBudget
	}
	if why != "" {
		// Forward as a stream, gate only: no retry, no fallback.
		res.telemetry().ReplaySkipped(why)
		return t.attempt(req)
	}
	keep := newKeep(res.mem, size)
	defer keep.drop()

	// Admission comes before buffering: a full bulkhead or an open
	// breaker must not first let the request occupy memory (and a slow
	// client the proxy's time). Only when a fallback needs the body (for
	// the cache key, or to send it to the fallback upstream) is a rejected
	// request's body still read, within the same budget and deadline.
	first, admitErr := t.up.admit()
	var body []byte
	cacheable := true
	if admitErr == nil || res.fallbackNeedsBody() {
		var err error
		if body, err = readBody(req, size); err != nil {
			first.report(classified{excluded: true})
			first.release()
			return nil, err
		}
	} else {
		cacheable = false // never read: no key can be made
		abandonBody(req)
	}
	h := newHTTPCall(t, req, body, hop)
	h.keep = keep
	if cacheable {
		h.key = res.httpCacheReq(req, body)
	}
	return h.serve(first, admitErr)
}

// replayable says how many bytes the request's body needs to be kept for
// replay, or why it cannot be: only a body of declared length at most the
// route's limit is buffered. A body of unknown length (chunked, an HTTP/2
// stream without content-length) may never end, and waiting for its end
// would hold the request back from the upstream, from the fallback's
// latency budget and from the route timeout alike.
func (res *resilience) replayable(req *http.Request) (int64, string) {
	switch {
	case req.Body == nil || req.Body == http.NoBody || req.ContentLength == 0:
		return 0, ""
	case req.ContentLength < 0:
		return 0, telemetry.ReplayUnknownLength
	case req.ContentLength > res.maxRequest:
		return 0, telemetry.ReplayTooLarge
	}
	return req.ContentLength, ""
}

// fallbackNeedsBody reports whether a fallback source of the route needs
// the request body: the cache (its key) or the fallback upstream.
func (res *resilience) fallbackNeedsBody() bool {
	return res.fb != nil && (res.cache != nil || uses(res.fb, routes.FallbackSourceUpstream))
}

// errBodyTimeout: the client did not send its declared body before the
// route's deadline (a trickle). It is the client's delay, not the
// upstream's: 408, not 504.
var errBodyTimeout = errors.New("request body not received in time")

// inboundKey carries what the transport needs of the request as the
// client sent it, which ReverseProxy does not pass on: its
// ResponseController, to put a read deadline on the body (a body read has
// no context to cancel it), and its headers, of which ReverseProxy has
// already removed the hop-by-hop ones (Proxy-Authorization among them).
type inboundKey struct{}

type inbound struct {
	rc     *http.ResponseController
	header http.Header
	// readLimit bounds buffering a body when the context has no
	// deadline (a route without a written timeout).
	readLimit time.Duration
}

func inboundOf(ctx context.Context) inbound {
	in, _ := ctx.Value(inboundKey{}).(inbound)
	return in
}

// readBody reads a body of declared length n, bounded in time: by the
// request context's deadline (a written route timeout, or the client's), or
// else by the route's first-response timeout counted once from the start
// (client progress does not extend it here: a buffered body is at most
// replay.max_request_bytes and has no reason to trickle); and the read ends
// at once when the context does (the client left, the route gave up).
func readBody(req *http.Request, n int64) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	ctx := req.Context()
	in := inboundOf(ctx)
	var left atomic.Bool // the client went away (not a timeout)
	if in.rc != nil {
		dl, ok := ctx.Deadline()
		if !ok && in.readLimit > 0 {
			dl, ok = time.Now().Add(in.readLimit), true
		}
		if ok {
			in.rc.SetReadDeadline(dl)
		}
		// A body read has no context: the connection's read deadline is
		// what unblocks it.
		stop := context.AfterFunc(ctx, func() {
			left.Store(errors.Is(ctx.Err(), context.Canceled))
			in.rc.SetReadDeadline(time.Now())
		})
		defer stop()
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(req.Body, b); err != nil {
		// The deadline stays: the rest of the body will not be read, and
		// the server must not wait for it either (see abandonBody).
		abandonBody(req)
		// A failed read of an HTTP/1 connection cancels the request's
		// context too, so the read error decides, not ctx.Err().
		switch {
		case left.Load():
			return nil, ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(ctx.Err(), context.DeadlineExceeded):
			return nil, errBodyTimeout
		}
		return nil, fmt.Errorf("%w: reading the request body: %w", errCanceled, err)
	}
	if in.rc != nil {
		// The body is in: the rest of the exchange is bounded by the
		// contexts.
		in.rc.SetReadDeadline(time.Time{})
	}
	return b, nil
}

// abandonBody gives up on a request body that will not be read (an early
// answer: a rejection, a body that did not come in time). Left alone, an
// HTTP/1.1 server reads what remains before it writes the answer (up to
// 256 KiB, to keep the connection), which for a client that holds its body
// back is forever. An expired read deadline makes that read fail at once,
// and closing the body then marks the connection to close after the
// answer. HTTP/2 resets just the stream.
func abandonBody(req *http.Request) {
	if req.Body == nil || req.Body == http.NoBody {
		return
	}
	if rc := inboundOf(req.Context()).rc; rc != nil {
		rc.SetReadDeadline(time.Now())
	}
	req.Body.Close()
}

// keep holds a replay reservation while the request's buffered body may
// still be read: by the client's handler and by the attempts, which can
// outlive it in the background. The last to drop it gives the bytes back.
type keep struct {
	mem  *fallback.Memory
	n    int64
	refs atomic.Int32
}

func newKeep(mem *fallback.Memory, n int64) *keep {
	k := &keep{mem: mem, n: n}
	k.refs.Store(1)
	return k
}

func (k *keep) hold() { k.refs.Add(1) }

func (k *keep) drop() {
	if k.refs.Add(-1) == 0 {
		k.mem.Release(k.n)
	}
}

// attempt sends req once through the upstream's gate.
func (t *routeTransport) attempt(req *http.Request) (*http.Response, error) {
	p, err := t.up.admit()
	if err != nil {
		return nil, err
	}
	return t.send(req, p)
}

// send sends req once, with the gate pass p already admitted.
func (t *routeTransport) send(req *http.Request, p *pass) (*http.Response, error) {
	resp, err := t.up.RoundTrip(req)
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	p.report(classifyHTTP(status, err, canceledInTime(req.Context())))
	if err != nil || resp.StatusCode == http.StatusSwitchingProtocols || p == nil {
		p.release()
		return resp, err
	}
	resp.Body = &releaseBody{ReadCloser: resp.Body, p: p}
	return resp, nil
}

// releaseBody frees the bulkhead slot when the response is finished.
type releaseBody struct {
	io.ReadCloser
	p *pass
}

func (b *releaseBody) Close() error {
	err := b.ReadCloser.Close()
	b.p.release()
	return err
}

// cancelBody ends the detached upstream context with the response.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// cacheTee stores the response, if the cache rules allow, as the client
// reads it: at a clean end of a body no larger than maxCachedResponse.
func (t *routeTransport) cacheTee(resp *http.Response, key cacheReq) io.ReadCloser {
	res := t.res
	if res.cache == nil || !key.store || !storableResponse(resp) {
		return resp.Body
	}
	return &teeBody{ReadCloser: resp.Body, limit: maxCachedResponse, done: func(b []byte) {
		res.storeHTTP(key, resp, b)
	}}
}

func entryOf(resp *http.Response, body []byte) *fallback.Entry {
	h := map[string][]string{}
	for _, k := range []string{"Content-Type", "Content-Encoding", "Content-Language", "Vary"} {
		if v := resp.Header.Values(k); len(v) > 0 {
			h[k] = append([]string(nil), v...)
		}
	}
	return &fallback.Entry{Status: resp.StatusCode, Header: h, Body: body}
}

// teeBody keeps a copy of what is read, and hands it over at a clean EOF.
type teeBody struct {
	io.ReadCloser
	buf   bytes.Buffer
	limit int
	over  bool
	done  func([]byte)
}

func (b *teeBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if !b.over {
		if b.buf.Len()+n > b.limit {
			b.over = true
			b.buf = bytes.Buffer{}
		} else {
			b.buf.Write(p[:n])
		}
	}
	if err == io.EOF && !b.over && b.done != nil {
		b.done(bytes.Clone(b.buf.Bytes()))
		b.done = nil
	}
	return n, err
}

func synthesize(status int, header map[string][]string, body []byte) *http.Response {
	h := make(http.Header, len(header)+2)
	for k, v := range header {
		h[k] = append([]string(nil), v...)
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &http.Response{
		StatusCode:    status,
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
	}
}

func okOrError(status int) string {
	if status >= 500 {
		return "error"
	}
	return "ok"
}

func backgroundResult(ctx context.Context, err error) string {
	if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return "error"
}

// httpCall is the HTTP adapter of the resilient policy (call.go): one
// request of a route with a retry or fallback policy, its body buffered.
// An attempt sends a copy of the request and reports one event, the
// response head (or the transport's error); the answer, the upstream's or
// a fallback's, is the response RoundTrip returns to ReverseProxy, which
// writes it.
type httpCall struct {
	call
	t    *routeTransport
	req  *http.Request // as ReverseProxy passed it: its context is the client's
	body []byte
	key  cacheReq
	keep *keep // the body's replay reservation

	resp *http.Response // the answer
}

func newHTTPCall(t *routeTransport, req *http.Request, body []byte, hop *telemetry.Hop) *httpCall {
	h := &httpCall{t: t, req: req, body: body}
	h.call = call{proto: h, res: t.res, up: t.up, hop: hop}
	return h
}

// serve runs the call; gate and admitErr are the first attempt's
// admission, made before the body was read. The request's context already
// carries the route timeout.
func (h *httpCall) serve(gate *pass, admitErr error) (*http.Response, error) {
	h.start(h.req.Context(), h.req.Context(), 0)
	defer h.end()
	if err := h.begin(gate, admitErr); err != nil {
		return nil, err
	}
	return h.resp, nil
}

// request is a copy of the buffered request under ctx, for one attempt.
func (h *httpCall) request(ctx context.Context) *http.Request {
	r := h.req.Clone(ctx)
	body := h.body
	if len(body) == 0 {
		r.Body, r.GetBody, r.ContentLength = http.NoBody, nil, 0
		return r
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	return r
}

func (h *httpCall) open(ctx context.Context, gate *pass) (*attempt, error) {
	actx, cancel := context.WithCancel(ctx)
	a := &attempt{events: make(chan event, 1), cancel: cancel, gate: gate}
	go a.roundTrip(h.t, h.request(actx))
	return a, nil
}

// roundTrip sends r once and reports the outcome; the channel has room
// for it, so the sender never waits.
func (a *attempt) roundTrip(t *routeTransport, r *http.Request) {
	resp, err := t.send(r, a.gate)
	a.events <- event{kind: evEnd, resp: resp, err: err}
}

// ended: send has reported to the breaker; the response body ends the
// rest (releaseBody, doneBody).
func (h *httpCall) ended(*attempt, event, bool) {}

func (h *httpCall) abort(a *attempt, _ error, _ bool) {
	a.cancel()
	h.discard(<-a.events)
}

func (h *httpCall) discard(ev event) {
	if ev.resp != nil {
		ev.resp.Body.Close()
	}
}

// complete: the body was buffered before the call began.
func (h *httpCall) complete() bool { return true }

func (h *httpCall) waitComplete(context.Context, time.Duration) bool { return true }

// failed: no response, or a server error.
func (h *httpCall) failed(ev event, _ bool) bool {
	return ev.err != nil || ev.resp.StatusCode >= 500
}

// retryable: a connection that failed before anything was sent can always
// be retried; a response status only for idempotent methods (RFC 9110
// §9.2.2), since the upstream may have acted on the request.
func (h *httpCall) retryable(_ *attempt, ev event) (string, bool) {
	on := h.res.on
	if ev.err != nil {
		return "connect-failure", on.Connect() && errors.Is(upstreamError(ev.err), errUnreachable)
	}
	if !on.HTTP(ev.resp.StatusCode) || !idempotent(h.req.Method) {
		return "", false
	}
	return strconv.Itoa(ev.resp.StatusCode), true
}

// header, sendHeader and message: an HTTP attempt reports only its end.
func (h *httpCall) header(event)        {}
func (h *httpCall) sendHeader() error   { return nil }
func (h *httpCall) message(event) error { return nil }

// deliver returns the upstream's response, stored in the cache as the
// client reads it if the rules allow; closing its body ends the upstream
// context.
func (h *httpCall) deliver(ev event) error {
	if ev.err != nil {
		return ev.err
	}
	ev.resp.Body = &cancelBody{ReadCloser: h.t.cacheTee(ev.resp, h.key), cancel: h.handOff()}
	h.resp = ev.resp
	return nil
}

// rejected: ReverseProxy's ErrorHandler reports a rejection that no
// fallback answered.
func (h *httpCall) rejected(string) {}

// fail: errors become responses in ReverseProxy's ErrorHandler.
func (h *httpCall) fail(err error) error { return err }

func (h *httpCall) cacheReq() cacheReq { return h.key }

func (h *httpCall) fromCache(e *fallback.Entry) bool {
	h.resp = synthesize(e.Status, e.Header, e.Body)
	return true
}

func (h *httpCall) fromStatic(s *routes.FallbackStatic) bool {
	hdr := map[string][]string{}
	if s.ContentType != "" {
		hdr["Content-Type"] = []string{s.ContentType}
	}
	h.resp = synthesize(cmp.Or(s.Status, http.StatusOK), hdr, []byte(s.Body)) // 0: 200, as documented
	return true
}

// fromUpstream asks the fallback upstream, within the client's context.
func (h *httpCall) fromUpstream(ctx context.Context) bool {
	if h.t.alt == nil {
		return false
	}
	alt := &routeTransport{up: h.t.alt}
	resp, err := alt.attempt(h.request(ctx))
	if err != nil {
		return false
	}
	if resp.StatusCode >= 500 {
		resp.Body.Close()
		return false
	}
	h.resp = resp
	return true
}

// answer marks the fallback answer. It is a stand-in: no cache along the
// way may keep it as the real thing.
func (h *httpCall) answer(src string) error {
	h.resp.Header.Set(fallbackHeader, src)
	h.resp.Header.Set("Cache-Control", "no-store")
	return nil
}

// toBackground keeps the buffered body reserved while the attempts may
// still send it.
func (h *httpCall) toBackground() { h.keep.hold() }

func (h *httpCall) fromBackground() { h.keep.drop() }

// settle reads a late response to its end, and stores it if the cache
// rules allow.
func (h *httpCall) settle(ctx context.Context, ev event) string {
	if ev.err != nil {
		return backgroundResult(ctx, ev.err)
	}
	resp := ev.resp
	defer resp.Body.Close()
	if h.res.cache == nil || !h.key.store || !storableResponse(resp) {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxCachedResponse))
		return okOrError(resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxCachedResponse+1))
	if err != nil || len(b) > maxCachedResponse {
		return backgroundResult(ctx, err)
	}
	if !h.res.storeHTTP(h.key, resp, b) {
		return "ok"
	}
	return "cached"
}
