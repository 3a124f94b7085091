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
// with a retry or fallback policy, replays, races and falls back. Putting
// this behind ReverseProxy's Transport seam keeps ReverseProxy the one place
// that writes responses, fallback answers included.
type routeTransport struct {
	up  *upstream
	alt *upstream // fallback upstream, if any
	res *resilience
}

func (t *routeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	hop := hopFrom(req.Context())
	if t.res == nil {
		return t.attempt(req, hop)
	}
	if req.Header.Get("Upgrade") != "" {
		// A WebSocket (or other) upgrade is a connection, not an answer
		// that could be replayed or stood in for.
		return t.attempt(req, hop)
	}
	res := t.res
	size, why := res.replayable(req)
	if why == "" && !res.mem.Reserve(size) {
		why = telemetry.ReplayBudget
	}
	if why != "" {
		// Forward as a stream, gate only: no retry, no fallback.
		res.telemetry().ReplaySkipped(why)
		return t.attempt(req, hop)
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
	return t.resilient(req, body, cacheable, keep, hop, first, admitErr)
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
func (t *routeTransport) attempt(req *http.Request, hop *telemetry.Hop) (*http.Response, error) {
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
	p.report(classifyHTTP(status, err, errors.Is(req.Context().Err(), context.Canceled)))
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

type roundTripResult struct {
	resp *http.Response
	err  error
}

// resilient runs the attempts (with retries) in the background of the
// client's wait, and answers from a fallback when they are late (after) or
// fail. The attempts run under a context detached from the client's but
// canceled with it until a fallback answers; then they finish in the
// route's bounded background queue, and a success refreshes the cache.
//
// first and admitErr are the first attempt's admission, made before the
// body was read; keep is the body's replay reservation.
func (t *routeTransport) resilient(req *http.Request, body []byte, cacheable bool, keep *keep, hop *telemetry.Hop, first *pass, admitErr error) (*http.Response, error) {
	res := t.res
	if res.budget != nil {
		res.budget.Request(res.now())
	}
	clientCtx := req.Context()
	uctx, ucancel := context.WithCancel(context.WithoutCancel(clientCtx))
	if dl, ok := clientCtx.Deadline(); ok {
		// Keep the route timeout and the client's deadline.
		var c2 context.CancelFunc
		uctx, c2 = context.WithDeadline(uctx, dl)
		prev := ucancel
		ucancel = func() { c2(); prev() }
	}
	stop := context.AfterFunc(clientCtx, ucancel)
	ureq := req.Clone(uctx)
	var key cacheReq
	if cacheable {
		key = res.httpCacheReq(req, body)
	}

	results := make(chan roundTripResult, 1)
	keep.hold()
	go func() {
		defer keep.drop()
		resp, err := t.attempts(ureq, body, hop, first, admitErr)
		results <- roundTripResult{resp, err}
	}()

	var late <-chan time.Time
	if res.fb != nil && res.fb.After > 0 {
		timer := time.NewTimer(res.fb.After)
		defer timer.Stop()
		late = timer.C
	}
	for {
		select {
		case r := <-results:
			stop()
			if res.fb != nil && failed(r) {
				if fb := t.fallback(clientCtx, req, body, key, reasonOf(r.err), hop); fb != nil {
					closeResult(r)
					ucancel()
					return fb, nil
				}
			}
			if r.err != nil {
				ucancel()
				return nil, r.err
			}
			r.resp.Body = &cancelBody{ReadCloser: t.cacheTee(r.resp, key), cancel: ucancel}
			return r.resp, nil
		case <-late:
			late = nil
			fb := t.fallback(clientCtx, req, body, key, "slow", hop)
			if fb == nil {
				continue // no source could answer: keep waiting for the upstream
			}
			stop()
			t.finishInBackground(results, key, ucancel)
			return fb, nil
		case <-clientCtx.Done():
			// stop's AfterFunc has canceled the attempts; collect them.
			closeResult(<-results)
			ucancel()
			return nil, clientCtx.Err()
		}
	}
}

// failed reports an outcome a fallback should answer for: no response, or
// a server error.
func failed(r roundTripResult) bool {
	return r.err != nil || r.resp.StatusCode >= 500
}

func closeResult(r roundTripResult) {
	if r.resp != nil {
		r.resp.Body.Close()
	}
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

// attempts sends the buffered request, retrying per the route's policy.
// The first attempt's admission (first, admitErr) was made by the caller.
func (t *routeTransport) attempts(req *http.Request, body []byte, hop *telemetry.Hop, first *pass, admitErr error) (*http.Response, error) {
	res := t.res
	if admitErr != nil {
		return nil, admitErr
	}
	for n := 1; ; n++ {
		r := req.Clone(req.Context())
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		r.ContentLength = int64(len(body))
		if len(body) == 0 {
			r.Body, r.GetBody = http.NoBody, nil
		}
		var resp *http.Response
		var err error
		if n == 1 {
			resp, err = t.send(r, first)
		} else {
			resp, err = t.attempt(r, hop)
		}
		if n >= res.attempts || !t.retryable(req, resp, err) || req.Context().Err() != nil {
			return resp, err
		}
		if !res.retryAllowed() {
			return resp, err
		}
		reason := "connect-failure"
		if resp != nil {
			reason = strconv.Itoa(resp.StatusCode)
			resp.Body.Close()
		}
		hop.Retried(n+1, reason)
		if err := res.backoff(req.Context(), n+1); err != nil {
			return nil, err
		}
	}
}

// retryable: a connection that failed before anything was sent can always
// be retried; a response status only for idempotent methods (RFC 9110
// §9.2.2), since the upstream may have acted on the request.
func (t *routeTransport) retryable(req *http.Request, resp *http.Response, err error) bool {
	on := t.res.on
	if err != nil {
		return on.Connect() && errors.Is(upstreamError(err), errUnreachable)
	}
	return on.HTTP(resp.StatusCode) && idempotent(req.Method)
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

// fallback answers from the route's sources in order; nil if none can.
func (t *routeTransport) fallback(ctx context.Context, req *http.Request, body []byte, key cacheReq, reason string, hop *telemetry.Hop) *http.Response {
	res := t.res
	for _, src := range res.fb.Use {
		var resp *http.Response
		switch src {
		case "cache":
			if e, ok := res.lookup(key); ok {
				resp = synthesize(e.Status, e.Header, e.Body)
			}
		case "static":
			if s := res.fb.Static; s != nil {
				h := map[string][]string{}
				if s.ContentType != "" {
					h["Content-Type"] = []string{s.ContentType}
				}
				resp = synthesize(cmp.Or(s.Status, http.StatusOK), h, []byte(s.Body)) // 0: 200, as documented
			}
		case "upstream":
			resp = t.altUpstream(ctx, req, body)
		}
		if resp != nil {
			resp.Header.Set(fallbackHeader, src)
			// A fallback answer is a stand-in: no cache along the way may
			// keep it as the real thing.
			resp.Header.Set("Cache-Control", "no-store")
			res.telemetry().Fallback(reason, src)
			hop.FellBack(reason, src)
			return resp
		}
	}
	return nil
}

// altUpstream asks the fallback upstream, within the client's context.
func (t *routeTransport) altUpstream(ctx context.Context, req *http.Request, body []byte) *http.Response {
	if t.alt == nil {
		return nil
	}
	r := req.Clone(ctx)
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	if len(body) == 0 {
		r.Body = http.NoBody
	}
	alt := &routeTransport{up: t.alt}
	resp, err := alt.attempt(r, nil)
	if err != nil {
		return nil
	}
	if resp.StatusCode >= 500 {
		resp.Body.Close()
		return nil
	}
	return resp
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

// finishInBackground lets the late attempts complete in the route's
// bounded queue; their success refreshes the cache. When the queue is full
// the call is canceled instead: an outage must not pile up goroutines.
func (t *routeTransport) finishInBackground(results <-chan roundTripResult, key cacheReq, cancel context.CancelFunc) {
	res := t.res
	started := res.bg.TryStart(func(ctx context.Context) {
		defer cancel()
		stop := context.AfterFunc(ctx, cancel) // the queue's timeout bounds the call
		defer stop()
		r := <-results
		if r.err != nil {
			res.telemetry().BackgroundDone(backgroundResult(ctx, r.err))
			return
		}
		defer r.resp.Body.Close()
		if res.cache == nil || !key.store || !storableResponse(r.resp) {
			io.Copy(io.Discard, io.LimitReader(r.resp.Body, maxCachedResponse))
			res.telemetry().BackgroundDone(okOrError(r.resp.StatusCode))
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.resp.Body, maxCachedResponse+1))
		if err != nil || len(b) > maxCachedResponse {
			res.telemetry().BackgroundDone(backgroundResult(ctx, err))
			return
		}
		if !res.storeHTTP(key, r.resp, b) {
			res.telemetry().BackgroundDone("ok")
			return
		}
		res.telemetry().BackgroundDone("cached")
	})
	if !started {
		cancel()
		closeResult(<-results) // returns promptly: the attempts were canceled
		res.telemetry().BackgroundDone("rejected")
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
