package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/routes"
)

// TestResilienceIdentity: a route's retry budget and background queue
// belong to the route (its policy, listener, match and upstream), its
// fallback cache also to the upstream's endpoints. An endpoint change
// alone (an xDS endpoint push, a DNS answer written into the file) gives a
// fresh cache (issue 8) but keeps the budget's history and the queue, which
// stays open after the generation that started it drains; any other change
// starts afresh.
func TestResilienceIdentity(t *testing.T) {
	spec := func(attempts int, endpoints ...string) *routes.Spec {
		return &routes.Spec{
			Listeners: []routes.Listener{{Name: "l", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}},
			Routes: []routes.Route{{Name: "r", Listener: "l", Upstream: "u",
				Retry:    &routes.Retry{Attempts: attempts, On: []string{"5xx"}, Budget: 0.2},
				Fallback: &routes.Fallback{After: time.Second, Use: []string{routes.FallbackSourceCache}}}},
			Upstreams: []routes.Upstream{{Name: "u", Protocol: routes.UpstreamHTTP, Endpoints: endpoints}},
		}
	}
	p := New(Options{})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	}()
	current := func() *resilience {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.res["r"]
	}
	if err := p.Apply(spec(2, "127.0.0.1:1")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                     string
		spec                     *routes.Spec
		state, budget, bg, cache bool // kept
	}{
		{"unchanged", spec(2, "127.0.0.1:1"), true, true, true, true},
		{"endpoints only", spec(2, "127.0.0.1:2", "127.0.0.1:3"), false, true, true, false},
		{"endpoints in another order", spec(2, "127.0.0.1:3", "127.0.0.1:2"), false, true, true, false},
		{"retry policy", spec(3, "127.0.0.1:3", "127.0.0.1:2"), false, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := current()
			if err := p.Apply(tc.spec); err != nil {
				t.Fatal(err)
			}
			now := current()
			for _, k := range []struct {
				what       string
				kept, want bool
			}{
				{"state", now == old, tc.state},
				{"retry budget", now.budget == old.budget, tc.budget},
				{"background queue", now.bg == old.bg, tc.bg},
				{"fallback cache", now.cache == old.cache, tc.cache},
			} {
				if k.kept != k.want {
					t.Errorf("%s kept: %v, want %v", k.what, k.kept, k.want)
				}
			}
			// The previous generation had no call in flight: it has
			// drained and closed what only it held; the queue, if kept,
			// is still open.
			started := make(chan struct{})
			if !now.bg.TryStart(func(context.Context) { close(started) }) {
				t.Fatal("the route's background queue is closed")
			}
			<-started
			if tc.bg {
				if n := now.bgUsers.Load(); n != 1 {
					t.Errorf("%d states share the queue after the old generation drained, want 1", n)
				}
			}
		})
	}
}

// stalled is a context past its deadline whose Done has not closed yet:
// the moment between a context's timer firing and its cancel reaching its
// children, made to last.
type stalled struct {
	context.Context
	deadline time.Time
}

func (s stalled) Deadline() (time.Time, bool) { return s.deadline, true }

// TestCanceledInTime: an attempt canceled before its deadline was given up
// (the client went away), one past its deadline timed out, even when a
// cancel overtook the deadline's (a call that saw its deadline pass
// cancels its attempt, and may do so before the context's own timer has
// canceled the children). Counted as the client's cancellation, such
// timeouts escaped the breaker (TestBreakerFaults failed 1 run in 4 under
// CPU load).
func TestCanceledInTime(t *testing.T) {
	bg := context.Background()
	cases := []struct {
		name string
		ctx  func() context.Context
		want bool
	}{
		{"running", func() context.Context { return bg }, false},
		{"canceled, no deadline", func() context.Context {
			ctx, cancel := context.WithCancel(bg)
			cancel()
			return ctx
		}, true},
		{"canceled before its deadline", func() context.Context {
			ctx, cancel := context.WithTimeout(bg, time.Hour)
			cancel()
			return ctx
		}, true},
		{"deadline exceeded", func() context.Context {
			ctx, cancel := context.WithTimeout(bg, -time.Second)
			t.Cleanup(cancel)
			return ctx
		}, false},
		{"canceled past its deadline, before the deadline's cancel came", func() context.Context {
			ctx, cancel := context.WithCancel(stalled{bg, time.Now().Add(-time.Millisecond)})
			cancel()
			return ctx
		}, false},
		{"canceled before a parent's deadline", func() context.Context {
			ctx, cancel := context.WithCancel(stalled{bg, time.Now().Add(time.Hour)})
			cancel()
			return ctx
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := canceledInTime(tc.ctx()); got != tc.want {
				t.Fatalf("canceledInTime = %v, want %v", got, tc.want)
			}
		})
	}
}
