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
	"github.com/hopwatch/hopwatch/telemetry"
)

// The resilient gRPC path serves routes with a retry or fallback policy.
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

// upEvent is what an attempt's reader saw: headers, a message, or the end.
type upEvent struct {
	header  metadata.MD
	msg     *frame
	end     bool
	err     error // at end: nil for OK
	trailer metadata.MD
}

// grpcAttempt is one upstream try of a resilient call.
type grpcAttempt struct {
	up        *upstream
	cancel    context.CancelFunc
	gate      *pass
	ep        *endpoint
	att       *telemetry.Attempt
	events    chan upEvent
	gotHeader bool
}

// startAttempt admits and opens one attempt and starts its sender (replays
// the log) and reader (turns the upstream stream into events). Both end
// with ctx.
func (p *Proxy) startAttempt(ctx context.Context, up *upstream, hop *telemetry.Hop, md metadata.MD, method string, log *requestLog) (*grpcAttempt, error) {
	gate, err := up.admit()
	if err != nil {
		return nil, err
	}
	return p.openAttempt(ctx, up, gate, hop, md, method, log)
}

// openAttempt is startAttempt with the gate pass already admitted.
func (p *Proxy) openAttempt(ctx context.Context, up *upstream, gate *pass, hop *telemetry.Hop, md metadata.MD, method string, log *requestLog) (*grpcAttempt, error) {
	actx, cancel := context.WithCancel(ctx)
	cs, ep, att, err := up.openGRPC(actx, hop, md, bidi, method, callOptions(md)...)
	if err != nil {
		cancel()
		code := status.Code(err)
		gate.report(classifyGRPC(code, false))
		gate.release()
		att.End(code.String(), telemetry.GRPCOutcome(code, false))
		return nil, err
	}
	a := &grpcAttempt{up: up, cancel: cancel, gate: gate, ep: ep, att: att, events: make(chan upEvent)}
	go func() {
		for i := 0; ; i++ {
			msg, more, err := log.next(actx, i)
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
	}()
	go func() {
		send := func(ev upEvent) bool {
			select {
			case a.events <- ev:
				return true
			case <-actx.Done():
				ev.msg.release()
				return false
			}
		}
		hdr, err := cs.Header()
		if err == nil && hdr != nil && !send(upEvent{header: hdr}) {
			return
		}
		for {
			f := new(frame)
			if err := cs.RecvMsg(f); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				send(upEvent{end: true, err: err, trailer: cs.Trailer()})
				return
			}
			if !send(upEvent{msg: f}) {
				return
			}
		}
	}()
	return a, nil
}

// finish ends an attempt's accounting with the call's status.
func (a *grpcAttempt) finish(p *Proxy, err error, canceled bool) {
	code := status.Code(err)
	a.ep.inflight.Add(-1)
	c := classifyGRPC(code, canceled)
	a.up.outcome(a.ep, c)
	a.gate.report(c)
	a.gate.release()
	a.att.End(code.String(), telemetry.GRPCOutcome(code, canceled))
}

// callGRPCResilient serves one call of a route with a retry or fallback
// policy. clientCtx is the client's stream context; ctx carries the hop's
// span. Attempts run under a context detached from the client's (canceled
// with it until a fallback answers), so a late call can finish in the
// background and refresh the cache.
func (p *Proxy) callGRPCResilient(clientCtx, ctx context.Context, ss grpc.ServerStream, rt *route, hop *telemetry.Hop, md metadata.MD, method string) error {
	res := rt.res
	if res.budget != nil {
		res.budget.Request(res.now())
	}
	uctx, ucancel := context.WithCancel(context.WithoutCancel(ctx))
	defer func() { ucancel() }()
	if dl, ok := clientCtx.Deadline(); ok {
		var c context.CancelFunc
		uctx, c = context.WithDeadline(uctx, dl)
		prev := ucancel
		ucancel = func() { c(); prev() }
	}
	if rt.spec.Timeout > 0 {
		var c context.CancelFunc
		uctx, c = context.WithTimeout(uctx, rt.spec.Timeout)
		prev := ucancel
		ucancel = func() { c(); prev() }
	}
	uctx = metadata.NewOutgoingContext(uctx, md)
	detach := context.AfterFunc(clientCtx, ucancel)
	canceled := func() bool { return errors.Is(clientCtx.Err(), context.Canceled) }

	// Admission comes before the request is recorded (see RoundTrip for
	// HTTP); a rejected call's request is still recorded, within the
	// replay budget, when a fallback may answer it.
	gate, admitErr := rt.up.admit()
	log := newRequestLog(res.maxRequest, res.mem, res.telemetry().ReplaySkipped)
	defer log.drop()
	defer log.stop()
	go log.read(ss)

	var late <-chan time.Time
	if res.fb != nil && res.fb.After > 0 {
		timer := time.NewTimer(res.fb.After)
		defer timer.Stop()
		late = timer.C
	}
	// fallbackNow answers from the fallback if the request is complete and
	// nothing has gone to the client yet; true if it did.
	var answered, headerSent bool
	var fbErr error
	fallbackNow := func(reason string) bool {
		if res.fb == nil || answered || headerSent {
			return false
		}
		msgs, ok := log.complete()
		if !ok {
			return false
		}
		var done bool
		done, fbErr = p.grpcFallback(clientCtx, ss, rt, hop, md, method, msgs, reason)
		return done
	}

	var a *grpcAttempt
	err := admitErr
	if err == nil {
		a, err = p.openAttempt(uctx, rt.up, gate, hop, md, method, log)
	}
	if err != nil && errors.Is(err, errRejected) {
		hop.Rejected(reasonOf(err))
		if res.fb != nil {
			if _, ok := log.waitComplete(clientCtx, res.fb.After); ok && fallbackNow(reasonOf(err)) {
				return fbErr
			}
		}
		return grpcError(err, method)
	}
	if err != nil {
		return p.endWithoutAttempt(clientCtx, ss, rt, hop, md, method, log, err, fallbackNow, &fbErr)
	}

	var held metadata.MD // upstream headers held back until a message or the end
	sendHeld := func() error {
		if held == nil {
			return nil
		}
		md := held
		held = nil
		headerSent = true
		return ss.SendHeader(md)
	}
	var first []byte    // the first response message, kept for the cache
	var hdr metadata.MD // the upstream's response headers, kept for the cache
	msgs := 0
	for n := 1; ; {
		select {
		case ev := <-a.events:
			switch {
			case ev.header != nil:
				a.gotHeader = true
				a.gate.firstResponse()
				hop.FirstByte()
				held, hdr = ev.header, ev.header
				if res.fb == nil {
					// Held headers only serve a fallback; a retry is off once
					// headers came anyway.
					if err := sendHeld(); err != nil {
						a.cancel()
						a.finish(p, err, canceled())
						return err
					}
				}
			case ev.msg != nil:
				if !answered {
					answered = true
					a.gate.firstResponse()
					hop.FirstByte()
					if err := sendHeld(); err != nil {
						ev.msg.release()
						a.cancel()
						a.finish(p, err, canceled())
						return err
					}
				}
				msgs++
				if msgs == 1 && res.cache != nil {
					first = ev.msg.data.Materialize()
				}
				if err := ss.SendMsg(ev.msg); err != nil {
					ev.msg.release()
					a.cancel()
					a.finish(p, err, canceled())
					return err
				}
			case ev.end:
				a.finish(p, ev.err, canceled())
				code := status.Code(ev.err)
				if !answered && ev.err != nil {
					// Retry: nothing reached the client, the upstream sent no
					// headers, the request can be replayed.
					if _, ok := log.complete(); ok && !a.gotHeader && n < res.attempts &&
						res.on.GRPC(code) && clientCtx.Err() == nil && res.retryAllowed() {
						n++
						hop.Retried(n, strings.ToLower(code.String()))
						if err := res.backoff(clientCtx, n); err != nil {
							return status.FromContextError(err).Err()
						}
						next, err := p.startAttempt(uctx, rt.up, hop, md, method, log)
						if err != nil {
							return p.endWithoutAttempt(clientCtx, ss, rt, hop, md, method, log, err, fallbackNow, &fbErr)
						}
						a = next
						held, hdr = nil, nil
						continue
					}
					if failure, _ := fallback.ClassifyGRPC(code, canceled()); failure && fallbackNow("error") {
						return fbErr
					}
				}
				// Headers of a message-less response, if still held.
				sendHeld()
				ss.SetTrailer(ev.trailer)
				if ev.err == nil && msgs == 1 && first != nil {
					if req, ok := log.complete(); ok {
						res.storeGRPC(res.grpcCacheReq(method, md, req), hdr, first, ev.trailer)
					}
				}
				return ev.err
			}
		case <-late:
			late = nil
			if answered {
				continue
			}
			if _, ok := log.complete(); !ok {
				// A stream still open: no fallback can stand in for it, so
				// nothing is gained by holding the upstream's headers (a
				// client may wait for them before it sends more).
				if err := sendHeld(); err != nil {
					a.cancel()
					a.finish(p, err, canceled())
					return err
				}
				continue
			}
			if !fallbackNow("slow") {
				continue
			}
			// The client has its answer; the upstream call finishes in the
			// background (bounded), and its success refreshes the cache.
			detach()
			p.grpcBackground(rt, a, method, md, log, ucancel)
			ucancel = func() {} // owned by the background task now
			return fbErr
		case <-clientCtx.Done():
			a.cancel()
			a.finish(p, status.FromContextError(clientCtx.Err()).Err(), canceled())
			return status.FromContextError(clientCtx.Err()).Err()
		}
	}
}

// endWithoutAttempt handles a call whose attempt could not start (no
// endpoint reachable): a fallback if possible, else the error.
func (p *Proxy) endWithoutAttempt(clientCtx context.Context, ss grpc.ServerStream, rt *route, hop *telemetry.Hop, md metadata.MD, method string, log *requestLog, err error, fallbackNow func(string) bool, fbErr *error) error {
	if errors.Is(err, errRejected) {
		hop.Rejected(reasonOf(err))
	}
	if rt.res.fb != nil {
		if _, ok := log.waitComplete(clientCtx, rt.res.fb.After); ok && fallbackNow(reasonOf(err)) {
			return *fbErr
		}
	}
	return grpcError(upstreamError(err), method)
}

// grpcBackground drains a late attempt in the route's bounded queue and
// caches a unary success; a full queue cancels the attempt instead.
func (p *Proxy) grpcBackground(rt *route, a *grpcAttempt, method string, md metadata.MD, log *requestLog, cancel context.CancelFunc) {
	res := rt.res
	log.hold() // the attempt may still be sending it; and the cache key
	started := res.bg.TryStart(func(ctx context.Context) {
		defer log.drop()
		defer cancel()
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		var hdr metadata.MD
		var body []byte
		msgs := 0
		for {
			select {
			case ev := <-a.events:
				switch {
				case ev.header != nil:
					hdr = ev.header
				case ev.msg != nil:
					msgs++
					if msgs == 1 {
						body = ev.msg.data.Materialize()
					}
					ev.msg.release()
				case ev.end:
					a.finish(p, ev.err, false)
					switch {
					case ev.err == nil && msgs == 1 && res.cache != nil && res.storeGRPCLog(method, md, log, hdr, body, ev.trailer):
						res.telemetry().BackgroundDone("cached")
					case ev.err == nil:
						res.telemetry().BackgroundDone("ok")
					case status.Code(ev.err) == codes.DeadlineExceeded || ctx.Err() != nil:
						res.telemetry().BackgroundDone("timeout")
					default:
						res.telemetry().BackgroundDone("error")
					}
					return
				}
			case <-ctx.Done():
				// The reader ends with the attempt's context (canceled by
				// the AfterFunc above) and sends no more.
				a.finish(p, status.FromContextError(ctx.Err()).Err(), false)
				res.telemetry().BackgroundDone("timeout")
				return
			}
		}
	})
	if !started {
		log.drop()
		a.cancel()
		cancel()
		a.finish(p, status.Error(codes.Canceled, "hopwatch: background queue full"), true)
		res.telemetry().BackgroundDone("rejected")
	}
}

// storeGRPCLog stores a unary success for the complete request in log.
func (res *resilience) storeGRPCLog(method string, md metadata.MD, log *requestLog, header metadata.MD, body []byte, trailer metadata.MD) bool {
	req, ok := log.complete()
	return ok && res.storeGRPC(res.grpcCacheReq(method, md, req), header, body, trailer)
}

// grpcFallback answers the client from the route's sources in order. It
// returns whether a source answered and the status to end the call with.
func (p *Proxy) grpcFallback(ctx context.Context, ss grpc.ServerStream, rt *route, hop *telemetry.Hop, md metadata.MD, method string, msgs [][]byte, reason string) (bool, error) {
	res := rt.res
	for _, src := range res.fb.Use {
		var e *fallback.Entry
		var st error
		switch src {
		case "cache":
			if res.cache != nil {
				e, _ = res.lookup(res.grpcCacheReq(method, md, msgs))
			}
		case "static":
			if s := res.fb.Static; s != nil {
				// OK: one empty message, the default value of any message
				// type; otherwise the status alone.
				e = &fallback.Entry{}
				if c, msg := s.GRPCStatus(); c != codes.OK {
					st = status.Error(c, msg)
				}
			}
		case "upstream":
			e = p.grpcAltUpstream(ctx, rt, hop, md, method, msgs)
		}
		if e == nil {
			continue
		}
		res.telemetry().Fallback(reason, src)
		hop.FellBack(reason, src)
		trailer := metadata.Join(e.Trailer, metadata.Pairs(fallbackTrailerGRPC, src))
		if st != nil {
			ss.SetTrailer(trailer)
			return true, st
		}
		if len(e.Header) > 0 {
			ss.SendHeader(e.Header)
		}
		if err := ss.SendMsg(&frame{data: mem.BufferSlice{mem.SliceBuffer(e.Body)}}); err != nil {
			return true, err
		}
		ss.SetTrailer(trailer)
		return true, nil
	}
	return false, nil
}

// grpcAltUpstream asks the fallback upstream and keeps its answer if it is
// a unary success.
func (p *Proxy) grpcAltUpstream(ctx context.Context, rt *route, hop *telemetry.Hop, md metadata.MD, method string, msgs [][]byte) *fallback.Entry {
	if rt.alt == nil {
		return nil
	}
	log := completeLog(msgs)
	uctx, cancel := upstreamContext(ctx, rt, md)
	defer cancel()
	a, err := p.startAttempt(uctx, rt.alt, hop, md, method, log)
	if err != nil {
		return nil
	}
	var e fallback.Entry
	n := 0
	for {
		var ev upEvent
		select {
		case ev = <-a.events:
		case <-uctx.Done():
			a.finish(p, status.FromContextError(uctx.Err()).Err(), false)
			return nil
		}
		switch {
		case ev.header != nil:
			e.Header = ev.header
		case ev.msg != nil:
			n++
			e.Body = ev.msg.data.Materialize()
			ev.msg.release()
		case ev.end:
			a.finish(p, ev.err, false)
			if ev.err != nil || n != 1 {
				return nil
			}
			e.Trailer = ev.trailer
			return &e
		}
	}
}
