package proxy

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
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
	body, ok := bufferBody(req)
	if !ok {
		// Too large to replay: forward as a stream, gate only.
		return t.attempt(req, hop)
	}
	return t.resilient(req, body, hop)
}

// attempt sends req once through the upstream's gate.
func (t *routeTransport) attempt(req *http.Request, hop *telemetry.Hop) (*http.Response, error) {
	p, err := t.up.admit()
	if err != nil {
		return nil, err
	}
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

// bufferBody reads a request body that is small enough to replay. When it
// is not (a streamed body that turns out larger), what was read is put back
// in front of the rest, so the request can still go on as a stream.
func bufferBody(req *http.Request) ([]byte, bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, true
	}
	if req.ContentLength > maxBufferedRequest {
		return nil, false
	}
	b, err := io.ReadAll(io.LimitReader(req.Body, maxBufferedRequest+1))
	if err != nil || len(b) > maxBufferedRequest {
		req.Body = readCloser{io.MultiReader(bytes.NewReader(b), req.Body), req.Body}
		return nil, false
	}
	return b, true
}

// readCloser reads from r and closes c.
type readCloser struct {
	io.Reader
	c io.Closer
}

func (rc readCloser) Close() error { return rc.c.Close() }

type roundTripResult struct {
	resp *http.Response
	err  error
}

// resilient runs the attempts (with retries) in the background of the
// client's wait, and answers from a fallback when they are late (after) or
// fail. The attempts run under a context detached from the client's but
// canceled with it until a fallback answers; then they finish in the
// route's bounded background queue, and a success refreshes the cache.
func (t *routeTransport) resilient(req *http.Request, body []byte, hop *telemetry.Hop) (*http.Response, error) {
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
	key := t.cacheKey(req, body)

	results := make(chan roundTripResult, 1)
	go func() {
		resp, err := t.attempts(ureq, body, hop)
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
func (t *routeTransport) attempts(req *http.Request, body []byte, hop *telemetry.Hop) (*http.Response, error) {
	res := t.res
	for n := 1; ; n++ {
		r := req.Clone(req.Context())
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		r.ContentLength = int64(len(body))
		if len(body) == 0 {
			r.Body, r.GetBody = http.NoBody, nil
		}
		resp, err := t.attempt(r, hop)
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

// cacheKey identifies the request for the fallback cache: route, method,
// path and query, body, and the configured headers.
func (t *routeTransport) cacheKey(req *http.Request, body []byte) fallback.Key {
	res := t.res
	if res.cache == nil {
		return fallback.Key{}
	}
	var hs []string
	if res.fb.Cache != nil {
		for _, h := range res.fb.Cache.Headers {
			hs = append(hs, h, strings.Join(req.Header.Values(h), ","))
		}
	}
	return fallback.KeyOf(res.name, req.Method, req.URL.RequestURI(), body, hs)
}

// cacheTee stores a cacheable response as the client reads it.
func (t *routeTransport) cacheTee(resp *http.Response, key fallback.Key) io.ReadCloser {
	res := t.res
	if res.cache == nil || !cacheable(resp) {
		return resp.Body
	}
	return &teeBody{ReadCloser: resp.Body, limit: maxCachedResponse, done: func(b []byte) {
		res.cache.Put(key, entryOf(resp, b), res.now())
	}}
}

// cacheable: successful, shareable responses only. A Set-Cookie or a
// private/no-store response belongs to one client and must never be served
// to another from the fallback cache.
func cacheable(resp *http.Response) bool {
	if resp.StatusCode < 200 || resp.StatusCode >= 300 || len(resp.Header["Set-Cookie"]) > 0 {
		return false
	}
	cc := strings.ToLower(resp.Header.Get("Cache-Control"))
	return !strings.Contains(cc, "no-store") && !strings.Contains(cc, "private")
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
func (t *routeTransport) fallback(ctx context.Context, req *http.Request, body []byte, key fallback.Key, reason string, hop *telemetry.Hop) *http.Response {
	res := t.res
	for _, src := range res.fb.Use {
		var resp *http.Response
		switch src {
		case "cache":
			if e, ok := res.cache.Get(key, res.now()); ok {
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
func (t *routeTransport) finishInBackground(results <-chan roundTripResult, key fallback.Key, cancel context.CancelFunc) {
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
		if res.cache == nil || !cacheable(r.resp) {
			io.Copy(io.Discard, io.LimitReader(r.resp.Body, maxCachedResponse))
			res.telemetry().BackgroundDone(okOrError(r.resp.StatusCode))
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.resp.Body, maxCachedResponse+1))
		if err != nil || len(b) > maxCachedResponse {
			res.telemetry().BackgroundDone(backgroundResult(ctx, err))
			return
		}
		res.cache.Put(key, entryOf(r.resp, b), res.now())
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
