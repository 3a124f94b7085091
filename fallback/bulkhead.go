package fallback

import "sync/atomic"

// Bulkhead caps the calls in flight to one upstream. It never blocks and
// never queues: a queue in front of a slow dependency only moves its
// latency into every caller, and an unbounded one into the proxy's memory.
// A caller that is refused answers at once (fallback, or 503 /
// RESOURCE_EXHAUSTED).
type Bulkhead struct {
	max      int64 // 0: unlimited
	inflight atomic.Int64
}

// NewBulkhead returns a bulkhead admitting limit concurrent calls
// (limit <= 0: unlimited, still counting InFlight).
func NewBulkhead(limit int) *Bulkhead {
	return &Bulkhead{max: int64(max(limit, 0))}
}

// TryAcquire takes a slot if one is free. A true result must be paired with
// exactly one Release.
func (b *Bulkhead) TryAcquire() bool {
	if b.max == 0 {
		b.inflight.Add(1)
		return true
	}
	// A compare-and-swap loop rather than add-then-undo: the undo would
	// briefly count a call that never runs and refuse a legitimate one.
	for {
		n := b.inflight.Load()
		if n >= b.max {
			return false
		}
		if b.inflight.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Release frees a slot taken by TryAcquire. Releasing more than was
// acquired is a bug in the caller, and panics rather than silently
// raising the limit.
func (b *Bulkhead) Release() {
	if b.inflight.Add(-1) < 0 {
		panic("fallback: Bulkhead.Release without a matching TryAcquire")
	}
}

// InFlight returns the calls holding a slot now.
func (b *Bulkhead) InFlight() int { return int(b.inflight.Load()) }

// Max returns the limit (0: unlimited).
func (b *Bulkhead) Max() int { return int(b.max) }
