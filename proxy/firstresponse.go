package proxy

import (
	"context"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// firstResponse is the context of a call on a route without a written
// timeout: it ends with context.DeadlineExceeded when the first-response
// timeout passes with no progress (the upstream's response has not
// started and the client has sent nothing more), unless started is called
// first, and with its parent in any case. Client progress (touch) restarts
// the clock: an upstream only owes a response once it has the request, and
// a client stream (audio, a long upload) may take longer than the timeout
// to send before any answer is due.
//
// A plain deadline cannot do this: it would also cut a healthy stream (SSE
// tokens, a gRPC server stream, a WebSocket) that runs longer than the
// timeout, and a deadline cannot be lifted once the response has begun.
// Cancelling with a cause instead would make the upstream call look
// canceled by the client (499, CANCELED, not counted by the breaker), so
// the context reports DeadlineExceeded itself, to the request path and to
// every context derived from it.
type firstResponse struct {
	// inner is the parent with a cancel cause: it answers Value (and so
	// context.Cause, which http.Transport reports) and follows the parent.
	context.Context
	cancelInner context.CancelCauseFunc
	done        chan struct{}
	timer       *time.Timer
	unhook      func() bool // stops following the parent

	d     time.Duration
	mu    sync.Mutex // guards the fields below
	err   error
	begun bool   // the response has started: the timer stays stopped
	hooks []hook // AfterFunc registrations; usually one derived context
	next  uint64 // id of the next hook
}

type hook struct {
	id uint64
	f  func()
}

func newFirstResponse(parent context.Context, d time.Duration) *firstResponse {
	inner, cancel := context.WithCancelCause(parent)
	c := &firstResponse{Context: inner, cancelInner: cancel, done: make(chan struct{}), d: d}
	c.timer = time.AfterFunc(d, func() { c.end(context.DeadlineExceeded) })
	// Follow the parent, not inner: inner ends only with the parent or
	// through end itself, and registering on inner would give it a
	// children map of its own (3 of the 17 allocations a call's context
	// cost).
	c.unhook = context.AfterFunc(parent, func() { c.end(parent.Err()) })
	return c
}

// Done is not inner's: context.WithCancel on a context whose Done is its
// inner cancelCtx's would register the child there, and the child would
// report Canceled. With a Done of its own, children register through
// AfterFunc and take Err from here.
func (c *firstResponse) Done() <-chan struct{} { return c.done }

func (c *firstResponse) Err() error {
	c.mu.Lock()
	err := c.err
	c.mu.Unlock()
	if err != nil {
		return err
	}
	// The parent may have ended and the AfterFunc goroutine that follows
	// it not run yet; whoever saw the parent end (a failed RecvMsg on the
	// client side, say) must find the same reason here, or a client's
	// cancellation would count as the upstream's failure.
	if perr := c.Context.Err(); perr != nil {
		c.end(perr)
		c.mu.Lock()
		err = c.err
		c.mu.Unlock()
	}
	return err
}

// started lifts the first-response bound: the response has begun, and from
// now on only the client (or the route's explicit timeout) ends the call.
func (c *firstResponse) started() {
	c.mu.Lock()
	c.begun = true
	c.mu.Unlock()
	c.timer.Stop()
}

// touch notes the client's progress (request bytes or a message): the
// timeout counts again from now. A touch that races with the timer firing
// does not save the call.
func (c *firstResponse) touch() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.begun || c.err != nil {
		return
	}
	c.timer.Reset(c.d)
}

// release ends the context once the call is over.
func (c *firstResponse) release() {
	c.timer.Stop()
	c.unhook()
	c.end(context.Canceled)
}

// AfterFunc lets context.WithCancel and context.AfterFunc on a derived
// context register here instead of starting a goroutine per derivation (see
// the afterFuncer interface in package context).
func (c *firstResponse) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		go f()
		return func() bool { return false }
	}
	id := c.next
	c.next++
	c.hooks = append(c.hooks, hook{id, f})
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, h := range c.hooks {
			if h.id == id {
				c.hooks = append(c.hooks[:i], c.hooks[i+1:]...)
				return true
			}
		}
		return false
	}
}

func (c *firstResponse) end(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.done)
	hooks := c.hooks
	c.hooks = nil
	c.mu.Unlock()
	c.cancelInner(err) // context.Cause(c) = err from now on
	for _, h := range hooks {
		go h.f()
	}
}

// firstResponseStream is a gRPC server stream whose context is a
// firstResponse that its first response to the client (headers or a
// message) lifts and every client message restarts. A trailers-only
// response ends the call anyway.
type firstResponseStream struct {
	grpc.ServerStream
	fr *firstResponse
}

func (s *firstResponseStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.fr.touch()
	}
	return err
}

func (s *firstResponseStream) Context() context.Context { return s.fr }

func (s *firstResponseStream) SendHeader(md metadata.MD) error {
	s.fr.started()
	return s.ServerStream.SendHeader(md)
}

func (s *firstResponseStream) SendMsg(m any) error {
	s.fr.started()
	return s.ServerStream.SendMsg(m)
}

// touchBody is an HTTP request body whose reads restart a firstResponse.
type touchBody struct {
	io.ReadCloser
	fr *firstResponse
}

func (b *touchBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.fr.touch()
	}
	return n, err
}
