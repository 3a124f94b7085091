package proxy

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/fallback"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// The resilient path: one policy, two protocols.
//
// A route with a retry or fallback policy serves each client call through
// a call: the per-call state machine below, written once. grpcCall
// (grpcres.go) and httpCall (httpres.go) embed it and adapt it to their
// protocol through the protocol interface: how to open (and so replay) an
// attempt, how to classify its outcome, how to write the upstream's or a
// fallback's answer to the client. The split follows grpc-go's
// clientStream/csAttempt: call holds what lives as long as the client's
// call, attempt what lives as long as one upstream try.
//
// The policy, in the order a call meets it:
//
//  1. The retry budget counts the call (resilience.budget). The first
//     attempt was admitted (breaker, bulkhead) before the request was
//     recorded or buffered: a rejected call does not first occupy memory.
//  2. Attempts run under a context detached from the client's (start):
//     the client's cancellation is linked to it until a fallback answers,
//     its deadline and the route timeout are kept. So a late attempt can
//     outlive the client's handler and refresh the cache.
//  3. The handler's goroutine drives the call (run): upstream events
//     (headers, messages, the end), the fallback's latency budget (late),
//     the backoff before a retry, and the client going away.
//  4. An attempt that failed before anything reached the client is retried
//     (onEnd, mayRetry) while attempts remain, the outcome is listed in
//     retry.on, the request can be replayed and the budget allows it.
//  5. Otherwise a failure, a rejection or a late answer is replaced by the
//     first fallback source with an answer (fallBack): cache, static or the
//     fallback upstream, in the order of fallback.use; only while nothing
//     reached the client and the request is complete.
//  6. A call answered from a fallback while its attempt still runs
//     finishes in the route's bounded background queue (finishInBackground),
//     where the same state machine settles it, retries included, and a
//     success refreshes the cache.

// eventKind is what an attempt reports.
type eventKind uint8

const (
	// evHeader: the upstream's response headers (gRPC).
	evHeader eventKind = iota + 1
	// evMessage: one response message (gRPC).
	evMessage
	// evEnd: the attempt's outcome is known: the gRPC status, or the HTTP
	// response head (its body still to be read) or transport error.
	evEnd
)

// event is one thing an attempt reports to its call. The payload fields
// are the protocol's own.
type event struct {
	kind    eventKind
	header  metadata.MD    // evHeader
	msg     *frame         // evMessage
	trailer metadata.MD    // evEnd, gRPC
	resp    *http.Response // evEnd, HTTP: nil with err
	err     error          // evEnd: nil when the upstream answered (gRPC: OK)
}

// release frees a message the call will not forward.
func (ev event) release() { ev.msg.release() }

// attempt is one upstream try of a call (grpc-go's csAttempt).
type attempt struct {
	events    chan event
	cancel    context.CancelFunc
	gate      *pass // its admission: breaker report and bulkhead slot
	gotHeader bool  // the upstream sent response headers: no retry

	// gRPC: the endpoint and the client span, ended with the call's
	// status. (HTTP ends them with the response body; see doneBody.)
	up   *upstream
	ep   *endpoint
	span *telemetry.Attempt
}

// protocol is what the policy needs of one protocol: the adapter a call
// drives. Methods a protocol has no use for are no-ops (HTTP never reports
// headers or messages apart from its response).
type protocol interface {
	// open starts one attempt, admitted by gate, under ctx: it sends (or
	// replays) the request and reports on the attempt's events.
	open(ctx context.Context, gate *pass) (*attempt, error)
	// ended accounts an attempt that reported its end.
	ended(a *attempt, ev event, canceled bool)
	// abort cancels an attempt that has not ended and accounts it with err.
	abort(a *attempt, err error, canceled bool)
	// discard drops an outcome the client will not get (retried, or
	// replaced by a fallback).
	discard(ev event)

	// complete reports whether the request is whole and kept, so that it
	// can be replayed or stood in for; waitComplete waits for it, bounded.
	complete() bool
	waitComplete(ctx context.Context, d time.Duration) bool

	// failed: a fallback should answer for this outcome.
	failed(ev event, canceled bool) bool
	// retryable: the route's retry.on lists this outcome and the protocol
	// allows sending the request again; reason labels the retry.
	retryable(a *attempt, ev event) (reason string, ok bool)

	// header holds the upstream's response headers; sendHeader sends the
	// held ones; message forwards one message; deliver ends the client's
	// call with the attempt's outcome.
	header(ev event)
	sendHeader() error
	message(ev event) error
	deliver(ev event) error
	// rejected reports a rejected attempt on the hop.
	rejected(reason string)
	// fail words an error that ends the call in the protocol's terms.
	fail(err error) error

	// cacheReq is the request as the fallback cache sees it.
	cacheReq() cacheReq
	// fromCache, fromStatic and fromUpstream prepare an answer from one
	// fallback source, if it has one; answer writes it to the client.
	fromCache(e *fallback.Entry) bool
	fromStatic(s *routes.FallbackStatic) bool
	fromUpstream(ctx context.Context) bool
	answer(source string) error

	// toBackground keeps the request for the background task, and from
	// then on only records what the attempt sends: the client's handler
	// is gone. fromBackground gives the request back.
	toBackground()
	fromBackground()
	// settle ends a background call with its outcome (storing a success
	// in the cache), and names the result for hopwatch_background_total.
	settle(ctx context.Context, ev event) string
}

// call is one client call on a resilient route (grpc-go's clientStream):
// the state that outlives each attempt.
type call struct {
	proto protocol
	res   *resilience
	up    *upstream
	hop   *telemetry.Hop

	client   context.Context    // the client's
	ctx      context.Context    // detached: what attempts run under
	cancel   context.CancelFunc // ends ctx; nil once handed over
	unlinkFn func() bool        // stops the client's cancellation of ctx

	lateT  *time.Timer
	late   <-chan time.Time // fallback.after; nil once passed
	retryT *time.Timer
	retryC <-chan time.Time // backoff before the next attempt

	att        *attempt // the running attempt; nil between attempts
	n          int      // attempts started
	held       bool     // response headers held back (for a fallback)
	headerSent bool     // response headers reached the client
	answered   bool     // a response message reached the client
	bg         bool     // handed to the background queue
}

// start sets the call up: counts it for the retry budget, detaches the
// upstream context from the client's (keeping the client's deadline and
// the route timeout, if any), and arms the fallback's latency budget.
func (c *call) start(client, base context.Context, timeout time.Duration) {
	res := c.res
	if res.budget != nil {
		res.budget.Request(res.now())
	}
	c.client = client
	ctx := context.WithoutCancel(base)
	dl, ok := client.Deadline()
	if timeout > 0 && (!ok || time.Until(dl) > timeout) {
		dl, ok = time.Now().Add(timeout), true
	}
	if ok {
		c.ctx, c.cancel = context.WithDeadline(ctx, dl)
	} else {
		c.ctx, c.cancel = context.WithCancel(ctx)
	}
	c.unlinkFn = context.AfterFunc(client, c.cancel)
	if res.fb != nil && res.fb.After > 0 {
		c.lateT = time.NewTimer(res.fb.After)
		c.late = c.lateT.C
	}
}

// end releases what the call holds once the client's handler is done,
// unless the background task or a response body owns it now.
func (c *call) end() {
	if c.lateT != nil {
		c.lateT.Stop()
	}
	if c.bg {
		return
	}
	if c.retryT != nil {
		c.retryT.Stop()
	}
	c.unlink()
	if c.cancel != nil {
		c.cancel()
	}
}

// unlink stops the client's cancellation from reaching the attempts.
func (c *call) unlink() { c.unlinkFn() }

// handOff gives the upstream context's cancel to whoever ends the call
// from now on (a response body, the background task).
func (c *call) handOff() context.CancelFunc {
	cancel := c.cancel
	c.cancel = nil
	return cancel
}

// canceled reports whether the client went away (rather than timing out).
func (c *call) canceled() bool {
	return !c.bg && errors.Is(c.client.Err(), context.Canceled)
}

// begin runs the call from its first attempt, admitted (gate) or rejected
// (admitErr) before the request was recorded.
func (c *call) begin(gate *pass, admitErr error) error {
	c.n = 1
	if admitErr != nil {
		return c.noAttempt(admitErr)
	}
	a, err := c.proto.open(c.ctx, gate)
	if err != nil {
		return c.noAttempt(err)
	}
	c.att = a
	return c.run()
}

// run drives the call until the client has its answer.
func (c *call) run() error {
	for {
		var events <-chan event
		if c.att != nil {
			events = c.att.events
		}
		// The call's own deadline, also while an attempt runs: a gRPC
		// attempt's reader drops its last event once the call's context
		// is done (report), so waiting for that event alone could hold
		// the client until its own deadline and never end the attempt.
		expired := c.ctx.Done()
		var done bool
		var err error
		select {
		case ev := <-events:
			done, err = c.on(ev)
		case <-c.late:
			done, err = c.onLate()
		case <-c.retryC:
			done, err = c.retry()
		case <-expired:
			if c.att != nil {
				c.proto.abort(c.att, c.ctx.Err(), c.canceled())
				c.att = nil
			}
			done, err = true, c.outOfTime()
		case <-c.client.Done():
			done, err = true, c.clientGone()
		}
		if done {
			return err
		}
	}
}

// on handles one event of the running attempt.
func (c *call) on(ev event) (bool, error) {
	switch ev.kind {
	case evHeader:
		return c.onHeader(ev)
	case evMessage:
		return c.onMessage(ev)
	}
	return c.onEnd(ev)
}

// onHeader holds the upstream's response headers: while a fallback may
// still answer, the client must not have seen the upstream's. Without a
// fallback they go at once (a retry is off once headers came anyway).
func (c *call) onHeader(ev event) (bool, error) {
	c.att.gotHeader = true
	c.att.gate.firstResponse()
	c.hop.FirstByte()
	c.proto.header(ev)
	c.held = true
	if c.res.fb == nil {
		if err := c.flush(); err != nil {
			return true, c.writeFailed(err)
		}
	}
	return false, nil
}

// onMessage forwards a response message; the first one commits the call
// to this attempt: no retry, no fallback from now on.
func (c *call) onMessage(ev event) (bool, error) {
	if !c.answered {
		c.answered = true
		c.att.gate.firstResponse()
		c.hop.FirstByte()
		if err := c.flush(); err != nil {
			ev.release()
			return true, c.writeFailed(err)
		}
	}
	if err := c.proto.message(ev); err != nil {
		return true, c.writeFailed(err)
	}
	return false, nil
}

// onEnd settles an ended attempt: retry it, stand in for it with a
// fallback, or hand its outcome to the client.
func (c *call) onEnd(ev event) (bool, error) {
	a := c.att
	c.att = nil
	c.proto.ended(a, ev, c.canceled())
	if !c.answered {
		if reason, ok := c.mayRetry(a, ev); ok {
			c.proto.discard(ev)
			c.backoff(reason)
			return false, nil
		}
		if c.proto.failed(ev, c.canceled()) && c.mayFallBack() {
			if ok, err := c.fallBack(reasonOf(ev.err)); ok {
				c.proto.discard(ev)
				return true, err
			}
		}
	}
	c.unlink()
	c.flush() // the headers of a message-less response, if still held
	return true, c.proto.deliver(ev)
}

// mayRetry applies the retry policy to an ended attempt. The budget is
// asked last: it counts what it allows.
func (c *call) mayRetry(a *attempt, ev event) (string, bool) {
	if c.n >= c.res.attempts || !c.proto.complete() {
		return "", false
	}
	reason, ok := c.proto.retryable(a, ev)
	if !ok || c.ctx.Err() != nil || (!c.bg && c.client.Err() != nil) {
		return "", false
	}
	return reason, c.res.retryAllowed()
}

// backoff waits, jittered, before the next attempt; run keeps watching the
// latency budget and the client meanwhile.
func (c *call) backoff(reason string) {
	c.n++
	c.hop.Retried(c.n, reason)
	d := fallback.Backoff(c.n-1, retryBackoffBase, retryBackoffMax, rand.Float64)
	if c.retryT == nil {
		c.retryT = time.NewTimer(d)
	} else {
		c.retryT.Reset(d)
	}
	c.retryC = c.retryT.C
}

// retry starts the next attempt once the backoff has passed.
func (c *call) retry() (bool, error) {
	c.retryC = nil
	if err := c.next(); err != nil {
		return true, c.noAttempt(err)
	}
	return false, nil
}

// next admits and opens the next attempt.
func (c *call) next() error {
	gate, err := c.up.admit()
	if err != nil {
		return err
	}
	a, err := c.proto.open(c.ctx, gate)
	if err != nil {
		return err
	}
	c.att, c.held = a, false
	return nil
}

// noAttempt ends a call whose attempt could not start (rejected, no
// endpoint reachable, out of time): a fallback if one can answer (waiting,
// within the latency budget, for a streamed request to complete), else the
// error.
func (c *call) noAttempt(err error) error {
	c.unlink()
	if errors.Is(err, errRejected) {
		c.proto.rejected(reasonOf(err))
	}
	if c.res.fb != nil && !c.committed() && c.proto.waitComplete(c.client, c.res.fb.After) {
		if ok, ferr := c.fallBack(reasonOf(err)); ok {
			return ferr
		}
	}
	return c.proto.fail(err)
}

// onLate: the latency budget has passed. A fallback answers now if it can,
// and the attempt finishes in the background.
func (c *call) onLate() (bool, error) {
	c.late = nil
	if c.answered {
		return false, nil
	}
	if !c.proto.complete() {
		// A stream still open: no fallback can stand in for it, so
		// nothing is gained by holding the upstream's headers (a client
		// may wait for them before it sends more).
		if err := c.flush(); err != nil {
			return true, c.writeFailed(err)
		}
		return false, nil
	}
	if !c.mayFallBack() {
		return false, nil
	}
	ok, err := c.fallBack("slow")
	if !ok {
		return false, nil // no source could answer: keep waiting for the upstream
	}
	c.finishInBackground()
	return true, err
}

// outOfTime ends a call whose upstream context ended while it waited to
// retry: the client's cancellation reaches it too.
func (c *call) outOfTime() error {
	if c.client.Err() != nil {
		return c.clientGone()
	}
	return c.noAttempt(c.ctx.Err())
}

// clientGone ends a call whose client went away or ran out of time.
func (c *call) clientGone() error {
	err := c.client.Err()
	if c.att != nil {
		c.proto.abort(c.att, err, c.canceled())
		c.att = nil
	}
	return c.proto.fail(err)
}

// writeFailed ends the running attempt after a failed write to the client.
func (c *call) writeFailed(err error) error {
	if c.att != nil {
		c.proto.abort(c.att, err, c.canceled())
		c.att = nil
	}
	return err
}

// flush sends the held response headers, if any.
func (c *call) flush() error {
	if !c.held {
		return nil
	}
	c.held = false
	c.headerSent = true
	return c.proto.sendHeader()
}

// committed reports whether anything of the upstream's answer reached the
// client: from then on no fallback may stand in for it.
func (c *call) committed() bool { return c.answered || c.headerSent }

// mayFallBack reports whether a fallback may answer now.
func (c *call) mayFallBack() bool {
	return c.res.fb != nil && !c.committed() && c.proto.complete()
}

// fallBack answers the client from the route's sources in the order of
// fallback.use. It reports whether one answered, and how writing the
// answer went.
func (c *call) fallBack(reason string) (bool, error) {
	for _, src := range c.res.fb.Use {
		if !c.source(src) {
			continue
		}
		c.res.telemetry().Fallback(reason, src)
		c.hop.FellBack(reason, src)
		return true, c.proto.answer(src)
	}
	return false, nil
}

// source prepares the answer of one fallback source, if it has one.
func (c *call) source(src string) bool {
	switch src {
	case routes.FallbackSourceCache:
		if c.res.cache == nil {
			return false
		}
		e, ok := c.res.lookup(c.proto.cacheReq())
		return ok && c.proto.fromCache(e)
	case routes.FallbackSourceStatic:
		return c.res.fb.Static != nil && c.proto.fromStatic(c.res.fb.Static)
	case routes.FallbackSourceUpstream:
		return c.proto.fromUpstream(c.client)
	}
	return false
}

// finishInBackground lets the late call complete in the route's bounded
// queue, where a success refreshes the cache. When the queue is full the
// attempt is canceled instead: an outage must not pile up goroutines.
func (c *call) finishInBackground() {
	c.unlink()
	c.bg = true
	cancel := c.handOff()
	c.proto.toBackground()
	if c.res.bg.TryStart(func(ctx context.Context) { c.background(ctx, cancel) }) {
		return
	}
	c.proto.fromBackground()
	if c.att != nil {
		c.proto.abort(c.att, context.Canceled, true)
		c.att = nil
	}
	if c.retryT != nil {
		c.retryT.Stop()
	}
	cancel()
	c.res.telemetry().BackgroundDone("rejected")
}

// background runs in the queue: the queue's timeout bounds the call.
func (c *call) background(ctx context.Context, cancel context.CancelFunc) {
	defer c.proto.fromBackground()
	defer cancel()
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	if c.retryT != nil {
		defer c.retryT.Stop()
	}
	c.res.telemetry().BackgroundDone(c.settleInBackground(ctx))
}

// settleInBackground drives the call to its end with nobody to answer:
// the same events, retries and outcomes as run, recorded for the cache.
func (c *call) settleInBackground(ctx context.Context) string {
	for {
		var events <-chan event
		if c.att != nil {
			events = c.att.events
		}
		// The call's own deadline, also while an attempt runs: a gRPC
		// attempt's reader drops its last event once the call's context
		// is done (report), so waiting for that event alone could hold
		// the client until its own deadline and never end the attempt.
		expired := c.ctx.Done()
		select {
		case ev := <-events:
			if result, done := c.onBackground(ctx, ev); done {
				return result
			}
		case <-c.retryC:
			c.retryC = nil
			if err := c.next(); err != nil {
				return c.proto.settle(ctx, event{kind: evEnd, err: err})
			}
		case <-expired:
			// End the attempt here, as run does: its breaker report, its
			// bulkhead slot and its endpoint's count must not outlive the
			// task (a gRPC attempt's reader drops its last event once the
			// context is done, so nothing else would end it).
			if c.att != nil {
				c.proto.abort(c.att, c.ctx.Err(), false)
				c.att = nil
			}
			return c.proto.settle(ctx, event{kind: evEnd, err: c.ctx.Err()})
		case <-ctx.Done():
			if c.att != nil {
				c.proto.abort(c.att, ctx.Err(), false)
				c.att = nil
			}
			return "timeout"
		}
	}
}

// onBackground handles one event of a background attempt.
func (c *call) onBackground(ctx context.Context, ev event) (string, bool) {
	switch ev.kind {
	case evHeader:
		c.att.gotHeader = true
		c.proto.header(ev)
		return "", false
	case evMessage:
		c.answered = true
		c.proto.message(ev)
		return "", false
	}
	a := c.att
	c.att = nil
	c.proto.ended(a, ev, false)
	if !c.answered {
		if reason, ok := c.mayRetry(a, ev); ok {
			c.proto.discard(ev)
			c.backoff(reason)
			return "", false
		}
	}
	return c.proto.settle(ctx, ev), true
}
