package fallback

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Background runs the calls that are still going when the client has
// already been answered from a fallback, so that a late success can
// refresh the cache. It is bounded three ways: at most maxInflight run at
// once (beyond that TryStart refuses, and the caller cancels the call
// instead: during an outage nothing may pile up), each runs under a
// timeout, and Close cancels them all. The Background owns every goroutine
// it starts.
type Background struct {
	max      int
	timeout  time.Duration
	onChange func(inflight int)
	ctx      context.Context // canceled by Close
	cancel   context.CancelFunc

	mu       sync.Mutex // guards inflight, closed and drained; onChange runs under it
	inflight int
	closed   bool
	drained  chan struct{} // closed once closed and nothing runs
	count    atomic.Int64  // inflight, for InFlight without the lock
}

// NewBackground returns a queue of at most s.MaxInflight concurrent tasks,
// each bounded by s.Timeout (zero: the defaults). onChange, if not nil, is told the new
// count whenever a task starts or ends, for a gauge; it runs under the
// queue's lock, so that the values arrive in order, and must be quick and
// must not call TryStart or Close.
func NewBackground(s BackgroundSettings, onChange func(inflight int)) *Background {
	s = s.withDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Background{
		max:      s.MaxInflight,
		timeout:  s.Timeout,
		onChange: onChange,
		ctx:      ctx,
		cancel:   cancel,
		drained:  make(chan struct{}),
	}
}

// TryStart runs fn in a new goroutine, with a context that ends at the
// queue's timeout or at Close, whichever comes first; fn must return soon
// after it ends. It returns false without running fn when the queue is
// full or closed. A panic in fn is not recovered: like any goroutine's, it
// ends the process.
func (b *Background) TryStart(fn func(ctx context.Context)) bool {
	b.mu.Lock()
	if b.closed || b.inflight >= b.max {
		b.mu.Unlock()
		return false
	}
	b.changeLocked(+1)
	b.mu.Unlock()
	go b.run(fn)
	return true
}

func (b *Background) run(fn func(ctx context.Context)) {
	defer b.finish()
	ctx, cancel := context.WithTimeout(b.ctx, b.timeout)
	defer cancel()
	fn(ctx)
}

func (b *Background) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.changeLocked(-1)
	if b.closed && b.inflight == 0 {
		close(b.drained)
	}
}

func (b *Background) changeLocked(delta int) {
	b.inflight += delta
	b.count.Store(int64(b.inflight))
	if b.onChange != nil {
		b.onChange(b.inflight)
	}
}

// InFlight returns the number of running tasks.
func (b *Background) InFlight() int { return int(b.count.Load()) }

// Close refuses new tasks, cancels the running ones and waits for them to
// return, or for ctx to end (then it returns ctx's error; the tasks still
// end on their own, canceled). It may be called more than once.
func (b *Background) Close(ctx context.Context) error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		if b.inflight == 0 {
			close(b.drained)
		}
	}
	b.mu.Unlock()
	b.cancel()
	select {
	case <-b.drained:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
