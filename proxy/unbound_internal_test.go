package proxy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/routes"
)

// TestUnboundListenerRetried: a listener whose deferred bind failed (the
// Apply that swapped it in returned a PartialError) is retried, best
// effort, by later applies with the same spec; while its port stays busy
// those applies still swap in the rest of the configuration (new DNS
// endpoints, xDS updates) instead of failing on it.
func TestUnboundListenerRetried(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	busy := routes.Listener{Name: "b", Address: taken.Addr().String(), Protocol: routes.ListenerGRPC}
	spec := func(endpoint string) *routes.Spec {
		return &routes.Spec{
			Listeners: []routes.Listener{{Name: "a", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC}, busy},
			Routes:    []routes.Route{{Name: "r", Listener: "a", Upstream: "u"}},
			Upstreams: []routes.Upstream{{Name: "u", Protocol: routes.UpstreamGRPC, Endpoints: []string{endpoint}}},
		}
	}
	p := New(Options{})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	}()
	first := spec("127.0.0.1:1")
	first.Listeners = first.Listeners[:1]
	if err := p.Apply(first); err != nil {
		t.Fatal(err)
	}
	// As after an Apply whose deferred bind of b failed.
	p.mu.Lock()
	p.unbound = map[string]routes.Listener{busy.Name: busy}
	p.mu.Unlock()

	var partial *PartialError
	next := spec("127.0.0.1:2")
	if err := p.Apply(next); !errors.As(err, &partial) {
		t.Fatalf("apply with the unbound listener's port still busy: %v, want a PartialError", err)
	}
	p.mu.Lock()
	swapped := p.written == next && p.ups["u"].spec.Endpoints[0] == "127.0.0.1:2"
	p.mu.Unlock()
	if !swapped {
		t.Fatal("the rest of the configuration was not swapped in")
	}
	taken.Close()
	if err := p.Apply(spec("127.0.0.1:3")); err != nil {
		t.Fatalf("apply once the port is free: %v", err)
	}
	if p.Addr("b") == nil {
		t.Fatal("listener b is still not bound")
	}
	p.mu.Lock()
	left := len(p.unbound)
	p.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d listeners still marked unbound", left)
	}
}
