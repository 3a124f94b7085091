package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/routes"
)

// TestGRPCListenerRelayDefault: a grpc listener that leaves relay out is
// served by the frame relay (the default since 2026-12-02), as is one that
// says relay: frames; relay: messages keeps grpc-go's server.
func TestGRPCListenerRelayDefault(t *testing.T) {
	for _, tc := range []struct {
		name, relay string
		wantRelay   bool
	}{
		{"left out: the frame relay", "", true},
		{"frames: the frame relay", routes.ListenerRelayFrames, true},
		{"messages: grpc-go's server", routes.ListenerRelayMessages, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &routes.Spec{
				Listeners: []routes.Listener{{Name: "g", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, Relay: tc.relay}},
				Routes:    []routes.Route{{Name: "r", Listener: "g", Upstream: "u"}},
				Upstreams: []routes.Upstream{{Name: "u", Protocol: routes.UpstreamGRPC, Endpoints: []string{"127.0.0.1:1"}}},
			}
			if errs := routes.Validate(spec); errs != nil {
				t.Fatalf("invalid spec: %v", errs)
			}
			p := New(Options{})
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				p.Shutdown(ctx)
			}()
			if err := p.Apply(spec); err != nil {
				t.Fatal(err)
			}
			p.mu.Lock()
			l := p.listeners["g"]
			gotRelay, gotGRPC := l.relay != nil, l.grpc != nil
			p.mu.Unlock()
			if gotRelay != tc.wantRelay || gotGRPC == tc.wantRelay {
				t.Errorf("relay server %v, grpc-go server %v; want relay %v", gotRelay, gotGRPC, tc.wantRelay)
			}
		})
	}
}
