package proxy

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/fallback"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// The resilient gRPC path serves routes with a retry or fallback policy:
// grpcCall adapts the policy of call.go to a gRPC stream, and requestLog
// keeps the request so that an attempt can replay it.
//
// The proxy cannot know a raw call's kind, so it decides per call from what
// the client does: every message is forwarded at once (streams behave as
// on any route), and also recorded. Once the client has half-closed after
// sending, in total, no more than replay.max_request_bytes (and while the
// proxy-wide replay budget had room for them), the request is
// complete and replayable: that is every unary and server-streaming call.
// Only then may an attempt be retried (and only while the upstream has sent
// no response headers) or the client be answered from a fallback (and only
// before the first response message reached the client). Client- and
// bidi-streaming calls that never complete pass through untouched.

// requestLog records the client's messages for replay.
//
// Memory is bounded three ways: a call keeps at most maxRequest bytes; all
// calls together keep at most what the proxy's replay budget (mem) grants;
// and past either limit the log stops keeping and applies back-pressure,
// reading a message from the client only once the attempt has taken the
// previous one, as plain forwarding does. Without that last rule a client
// could push messages into the proxy far faster than a slow upstream takes
// them (one stream pushed over 1 GiB in 6 s).
type requestLog struct {
	mu       sync.Mutex
	msgs     [][]byte
	base     int // index of msgs[0]: messages before it were dropped (overflow)
	size     int64
	closed   bool  // the client half-closed
	err      error // the client stream failed (canceled, ...)
	overflow bool  // too much to replay: no retry, no fallback
	changed  chan struct{}

	maxRequest int64
	mem        *fallback.Memory // nil: no budget (a log made from complete messages)
	charged    int64            // reserved from mem
	onSkip     func(reason string)
	stopped    chan struct{} // closed when the call's handler is done
	stopOnce   sync.Once
	refs       atomic.Int32 // the handler and a background task; the last gives back charged
}

func newRequestLog(maxRequest int64, mem *fallback.Memory, onSkip func(string)) *requestLog {
	l := &requestLog{changed: make(chan struct{}), maxRequest: maxRequest, mem: mem, onSkip: onSkip, stopped: make(chan struct{})}
	l.refs.Store(1)
	return l
}

// completeLog is a log of a request already complete, for a fallback
// upstream's attempt.
func completeLog(msgs [][]byte) *requestLog {
	return &requestLog{msgs: msgs, closed: true, changed: make(chan struct{}), stopped: make(chan struct{})}
}

// hold keeps the log's messages (and their reservation) for a background
// task that outlives the handler.
func (l *requestLog) hold() { l.refs.Add(1) }

// drop ends a holder's use; the last one gives the reservation back.
func (l *requestLog) drop() {
	if l.refs.Add(-1) != 0 {
		return
	}
	l.mu.Lock()
	n := l.charged
	l.charged = 0
	l.mu.Unlock()
	if l.mem != nil {
		l.mem.Release(n)
	}
}

// stop tells the reader that the call's handler is done, so that a reader
// held back by back-pressure ends too.
func (l *requestLog) stop() { l.stopOnce.Do(func() { close(l.stopped) }) }

// read pumps the client stream into the log until it ends.
func (l *requestLog) read(ss grpc.ServerStream) {
	for {
		if !l.waitRoom() {
			return
		}
		var f frame
		err := ss.RecvMsg(&f)
		l.mu.Lock()
		switch {
		case errors.Is(err, io.EOF):
			l.closed = true
		case err != nil:
			l.err = err
		default:
			b := f.data.Materialize()
			f.release()
			l.msgs = append(l.msgs, b)
			l.size += int64(len(b))
			l.account(int64(len(b)))
		}
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// account charges a new message of n bytes to the budget, or switches the
// log to overflow when it does not fit. Called with mu held.
func (l *requestLog) account(n int64) {
	if l.overflow {
		return
	}
	reason := ""
	switch {
	case l.size > l.maxRequest:
		reason = telemetry.ReplayTooLarge
	case l.mem != nil && !l.mem.Reserve(n):
		reason = telemetry.ReplayBudget
	default:
		l.charged += n
		return
	}
	l.overflow = true
	if l.onSkip != nil {
		l.onSkip(reason)
	}
}

// waitRoom holds the reader back while, past the replay limit, a message
// is still waiting for the attempt to take it. It returns false when the
// call is over.
func (l *requestLog) waitRoom() bool {
	for {
		l.mu.Lock()
		full, ch := l.overflow && len(l.msgs) > 0, l.changed
		l.mu.Unlock()
		if !full {
			return true
		}
		select {
		case <-ch:
		case <-l.stopped:
			return false
		}
	}
}

// next returns message i, waiting for it; more is false at the client's
// half-close. After an overflow, messages handed out are dropped.
func (l *requestLog) next(ctx context.Context, i int) (msg []byte, more bool, err error) {
	for {
		l.mu.Lock()
		if i >= l.base && i-l.base < len(l.msgs) {
			msg = l.msgs[i-l.base]
			if l.overflow {
				// Past the replay limit only the one current attempt reads,
				// in order: forget everything up to what it now has, give
				// back what it was charged, and let the reader go on.
				l.msgs = l.msgs[i-l.base+1:]
				l.base = i + 1
				if l.charged > 0 && l.mem != nil {
					l.mem.Release(l.charged)
					l.charged = 0
				}
				close(l.changed)
				l.changed = make(chan struct{})
			}
			l.mu.Unlock()
			return msg, true, nil
		}
		closed, cerr, ch := l.closed, l.err, l.changed
		l.mu.Unlock()
		if closed {
			return nil, false, nil
		}
		if cerr != nil {
			return nil, false, cerr
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// complete returns the whole request if the client half-closed and it was
// small enough to keep.
func (l *requestLog) complete() ([][]byte, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed || l.overflow || l.err != nil {
		return nil, false
	}
	return l.msgs, true
}

// waitComplete waits (bounded) for the request to complete.
func (l *requestLog) waitComplete(ctx context.Context, d time.Duration) ([][]byte, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		if msgs, ok := l.complete(); ok {
			return msgs, true
		}
		l.mu.Lock()
		done, ch := l.closed || l.err != nil || l.overflow, l.changed
		l.mu.Unlock()
		if done {
			return nil, false
		}
		select {
		case <-ch:
		case <-t.C:
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
}

// grpcCall is the gRPC adapter of the resilient policy (call.go): one
// client call of a route with a retry or fallback policy. An attempt
// replays the request log to a new upstream stream and reports the
// upstream's headers, messages and status as events; the client gets the
// headers with the first message (held back until then, for a fallback),
// every message as it comes, and the status in the trailers.
type grpcCall struct {
	call
	ss     grpc.ServerStream
	rt     *route
	md     metadata.MD // outgoing metadata; each attempt writes its trace context there
	method string
	log    *requestLog

	held  metadata.MD // upstream headers held back until a message or the end
	hdr   metadata.MD // the upstream's response headers, kept for the cache
	first []byte      // the first response message, kept for the cache
	msgs  int         // response messages so far

	fb   *fallback.Entry // the fallback answer being given
	fbSt error           // its status, when not OK
}

func newGRPCCall(ss grpc.ServerStream, rt *route, md metadata.MD, method string) *grpcCall {
	g := &grpcCall{ss: ss, rt: rt, md: md, method: method}
	g.call = call{proto: g, res: rt.res, up: rt.up}
	return g
}

// serve runs the call. clientCtx is the client's stream context; ctx
// carries the hop's span.
func (g *grpcCall) serve(clientCtx, ctx context.Context, hop *telemetry.Hop) error {
	res := g.res
	g.hop = hop
	// Admission comes before the request is recorded (see RoundTrip for
	// HTTP); a rejected call's request is still recorded, within the
	// replay budget, when a fallback may answer it.
	gate, admitErr := g.up.admit()
	g.log = newRequestLog(res.maxRequest, res.mem, res.telemetry().ReplaySkipped)
	defer g.log.drop()
	defer g.log.stop()
	go g.log.read(g.ss)
	g.start(clientCtx, metadata.NewOutgoingContext(ctx, g.md), g.rt.spec.Timeout)
	defer g.end()
	return g.begin(gate, admitErr)
}

func (g *grpcCall) open(ctx context.Context, gate *pass) (*attempt, error) {
	g.held, g.hdr = nil, nil
	return g.openOn(ctx, g.rt.up, gate, g.log)
}

// openOn opens one attempt on up, admitted by gate, and starts its sender
// (replays log) and reader (turns the upstream stream into events). Both
// end with ctx.
func (g *grpcCall) openOn(ctx context.Context, up *upstream, gate *pass, log *requestLog) (*attempt, error) {
	actx, cancel := context.WithCancel(ctx)
	// Each attempt gets its own copy of the metadata: its trace context is
	// written into it, while earlier attempts (late ones in the background,
	// the fallback upstream's) may still be reading theirs.
	md := g.md.Copy()
	cs, ep, span, err := up.openGRPC(actx, g.hop, md, bidi, g.method, callOptions(md)...)
	if err != nil {
		cancel()
		code := status.Code(err)
		gate.report(classifyGRPC(code, false))
		gate.release()
		span.End(code.String(), telemetry.GRPCOutcome(code, false))
		return nil, err
	}
	a := &attempt{events: make(chan event), cancel: cancel, gate: gate, up: up, ep: ep, span: span}
	go replayGRPC(actx, cancel, cs, log)
	go a.readGRPC(actx, cs)
	return a, nil
}

// replayGRPC sends the logged request messages, waiting for those still to
// come, and half-closes after the last.
func replayGRPC(ctx context.Context, cancel context.CancelFunc, cs grpc.ClientStream, log *requestLog) {
	for i := 0; ; i++ {
		msg, more, err := log.next(ctx, i)
		if err != nil {
			cancel()
			return
		}
		if !more {
			cs.CloseSend()
			return
		}
		if err := cs.SendMsg(&frame{data: mem.BufferSlice{mem.SliceBuffer(msg)}}); err != nil {
			return // the status comes from the reader
		}
	}
}

// readGRPC reports the upstream's headers, messages and end as events.
func (a *attempt) readGRPC(ctx context.Context, cs grpc.ClientStream) {
	hdr, err := cs.Header()
	if err == nil && hdr != nil && !a.report(ctx, event{kind: evHeader, header: hdr}) {
		return
	}
	for {
		f := new(frame)
		if err := cs.RecvMsg(f); err != nil {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			a.report(ctx, event{kind: evEnd, err: err, trailer: cs.Trailer()})
			return
		}
		if !a.report(ctx, event{kind: evMessage, msg: f}) {
			return
		}
	}
}

// report hands an event to the call, unless the attempt is over.
func (a *attempt) report(ctx context.Context, ev event) bool {
	select {
	case a.events <- ev:
		return true
	case <-ctx.Done():
		ev.release()
		return false
	}
}

// endGRPC ends an attempt's accounting with the call's status.
func (a *attempt) endGRPC(err error, canceled bool) {
	code := status.Code(err)
	a.ep.inflight.Add(-1)
	c := classifyGRPC(code, canceled)
	a.up.outcome(a.ep, c)
	a.gate.report(c)
	a.gate.release()
	a.span.End(code.String(), telemetry.GRPCOutcome(code, canceled))
}

func (g *grpcCall) ended(a *attempt, ev event, canceled bool) { a.endGRPC(ev.err, canceled) }

func (g *grpcCall) abort(a *attempt, err error, canceled bool) {
	a.cancel()
	a.endGRPC(grpcStatusOf(err), canceled)
}

// grpcStatusOf words a context's error as the status it stands for.
func grpcStatusOf(err error) error {
	if isContextError(err) {
		return status.FromContextError(err).Err()
	}
	return err
}

// isContextError reports whether err is a context's own error (not a
// status that reports one).
func isContextError(err error) bool {
	if _, ok := status.FromError(err); ok {
		return false
	}
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

func (g *grpcCall) discard(event) {}

// complete: the client half-closed within the replay limits.
func (g *grpcCall) complete() bool {
	_, ok := g.log.complete()
	return ok
}

func (g *grpcCall) waitComplete(ctx context.Context, d time.Duration) bool {
	_, ok := g.log.waitComplete(ctx, d)
	return ok
}

func (g *grpcCall) failed(ev event, canceled bool) bool {
	if ev.err == nil {
		return false
	}
	failure, _ := fallback.ClassifyGRPC(status.Code(ev.err), canceled)
	return failure
}

// retryable: a status listed in retry.on, from an upstream that sent no
// headers (a response begun is not taken back).
func (g *grpcCall) retryable(a *attempt, ev event) (string, bool) {
	code := status.Code(ev.err)
	if ev.err == nil || a.gotHeader || !g.res.on.GRPC(code) {
		return "", false
	}
	return strings.ToLower(code.String()), true
}

func (g *grpcCall) header(ev event) {
	g.hdr = ev.header
	if !g.bg {
		g.held = ev.header
	}
}

func (g *grpcCall) sendHeader() error {
	md := g.held
	g.held = nil
	return g.ss.SendHeader(md)
}

// message forwards one message (in the background: only keeps it for the
// cache).
func (g *grpcCall) message(ev event) error {
	g.msgs++
	if g.msgs == 1 && g.res.cache != nil {
		g.first = ev.msg.data.Materialize()
	}
	if g.bg {
		ev.release()
		return nil
	}
	if err := g.ss.SendMsg(ev.msg); err != nil {
		ev.release()
		return err
	}
	return nil
}

func (g *grpcCall) deliver(ev event) error {
	g.ss.SetTrailer(ev.trailer)
	if ev.err == nil {
		g.store(ev.trailer)
	}
	return ev.err
}

// store keeps a unary success (one message, for a complete request) in
// the cache, with the upstream's headers and trailers. The message may be
// empty (first is nil then: an empty message, such as google.protobuf.Empty,
// is an answer too). A service's verdict is not kept: it was about this
// turn, not about the turns a cached answer will stand in for.
func (g *grpcCall) store(trailer metadata.MD) bool {
	if g.msgs != 1 || g.res.cache == nil {
		return false
	}
	req, ok := g.log.complete()
	if !ok {
		return false
	}
	hdr := g.hdr
	if k := g.hop.VerdictKey(); k != "" {
		hdr, trailer = withoutKey(hdr, k), withoutKey(trailer, k)
	}
	return g.res.storeGRPC(g.res.grpcCacheReq(g.method, g.md, req), hdr, g.first, trailer)
}

// withoutKey returns md without key, copying it only if it has the key.
func withoutKey(md metadata.MD, key string) metadata.MD {
	if _, ok := md[key]; !ok {
		return md
	}
	md = md.Copy()
	delete(md, key)
	return md
}

func (g *grpcCall) rejected(reason string) { g.hop.Rejected(reason) }

// fail: the client's own end (canceled, its deadline) as grpc-go words
// it; anything else as the proxy does (grpcError).
func (g *grpcCall) fail(err error) error {
	if isContextError(err) {
		return status.FromContextError(err).Err()
	}
	return grpcError(upstreamError(err), g.method)
}

func (g *grpcCall) cacheReq() cacheReq {
	msgs, ok := g.log.complete()
	if !ok {
		return cacheReq{}
	}
	return g.res.grpcCacheReq(g.method, g.md, msgs)
}

func (g *grpcCall) fromCache(e *fallback.Entry) bool {
	g.fb, g.fbSt = e, nil
	return true
}

// fromStatic: OK is one empty message, the default value of any message
// type; any other code is the status alone.
func (g *grpcCall) fromStatic(s *routes.FallbackStatic) bool {
	g.fb, g.fbSt = &fallback.Entry{}, nil
	if c, msg := s.GRPCStatus(); c != codes.OK {
		g.fbSt = status.Error(c, msg)
	}
	return true
}

func (g *grpcCall) fromUpstream(ctx context.Context) bool {
	e := g.altUpstream(ctx)
	g.fb, g.fbSt = e, nil
	return e != nil
}

// answer writes the fallback answer, marked in a trailer.
func (g *grpcCall) answer(src string) error {
	e := g.fb
	trailer := metadata.Join(e.Trailer, metadata.Pairs(fallbackTrailerGRPC, src))
	if g.fbSt != nil {
		g.ss.SetTrailer(trailer)
		return g.fbSt
	}
	if len(e.Header) > 0 {
		g.ss.SendHeader(e.Header)
	}
	if err := g.ss.SendMsg(&frame{data: mem.BufferSlice{mem.SliceBuffer(e.Body)}}); err != nil {
		return err
	}
	g.ss.SetTrailer(trailer)
	return nil
}

// altUpstream asks the fallback upstream and keeps its answer if it is a
// unary success.
func (g *grpcCall) altUpstream(ctx context.Context) *fallback.Entry {
	msgs, ok := g.log.complete()
	if g.rt.alt == nil || !ok {
		return nil
	}
	uctx, cancel := upstreamContext(ctx, g.rt, g.md)
	defer cancel()
	gate, err := g.rt.alt.admit()
	if err != nil {
		return nil
	}
	a, err := g.openOn(uctx, g.rt.alt, gate, completeLog(msgs))
	if err != nil {
		return nil
	}
	var e fallback.Entry
	n := 0
	for {
		var ev event
		select {
		case ev = <-a.events:
		case <-uctx.Done():
			a.endGRPC(status.FromContextError(uctx.Err()).Err(), false)
			return nil
		}
		switch ev.kind {
		case evHeader:
			e.Header = ev.header
		case evMessage:
			n++
			if n > 1 {
				// Only a unary answer can stand in; a stream is not read
				// (and copied) to its end to find that out.
				ev.release()
				a.cancel()
				a.endGRPC(status.Error(codes.Canceled, "hopwatch: the fallback upstream streams; only a single answer can stand in"), false)
				return nil
			}
			e.Body = ev.msg.data.Materialize()
			ev.release()
		case evEnd:
			a.endGRPC(ev.err, false)
			if ev.err != nil || n != 1 {
				return nil
			}
			e.Trailer = ev.trailer
			return &e
		}
	}
}

// toBackground keeps the request log (the attempt may still be sending
// it; and the cache key) for the background task.
func (g *grpcCall) toBackground() { g.log.hold() }

func (g *grpcCall) fromBackground() { g.log.drop() }

func (g *grpcCall) settle(ctx context.Context, ev event) string {
	switch {
	case ev.err == nil && g.store(ev.trailer):
		return "cached"
	case ev.err == nil:
		return "ok"
	case status.Code(ev.err) == codes.DeadlineExceeded || ctx.Err() != nil:
		return "timeout"
	}
	return "error"
}
