package fallback

import "sync/atomic"

// Memory is a process-wide byte budget for what the proxy holds in memory
// on behalf of requests: request bodies and gRPC messages kept for replay
// (retries, fallback answers, cache keys). Each request reserves what it
// keeps before keeping it and gives it back when its call is over; when the
// budget is spent, the request is forwarded as a stream, without retry or
// fallback, instead of being refused: losing resilience for one call is
// better than losing the process to a crowd of large or slow requests.
//
// Reservations never block. Safe for concurrent use; the zero value has no
// room (use NewMemory).
type Memory struct {
	limit atomic.Int64
	used  atomic.Int64
	// onChange, if set, is told the bytes in use after every change (a
	// gauge). It must be cheap and must not call back into Memory.
	onChange func(used int64)
}

// NewMemory returns a budget of limit bytes; onChange may be nil.
func NewMemory(limit int64, onChange func(used int64)) *Memory {
	m := &Memory{onChange: onChange}
	m.limit.Store(limit)
	return m
}

// SetLimit changes the budget (a reload). Reservations already held stay
// valid even if they now exceed it; new ones wait for room.
func (m *Memory) SetLimit(limit int64) { m.limit.Store(limit) }

// Limit returns the budget.
func (m *Memory) Limit() int64 { return m.limit.Load() }

// Used returns the bytes reserved now.
func (m *Memory) Used() int64 { return m.used.Load() }

// Reserve takes n bytes if they fit under the limit, and reports whether
// it did. Reserving 0 always succeeds.
func (m *Memory) Reserve(n int64) bool {
	if n <= 0 {
		return true
	}
	for {
		used := m.used.Load()
		if used+n > m.limit.Load() {
			return false
		}
		if m.used.CompareAndSwap(used, used+n) {
			m.changed(used + n)
			return true
		}
	}
}

// Release gives back n bytes taken with Reserve.
func (m *Memory) Release(n int64) {
	if n <= 0 {
		return
	}
	m.changed(m.used.Add(-n))
}

func (m *Memory) changed(used int64) {
	if m.onChange != nil {
		m.onChange(used)
	}
}
