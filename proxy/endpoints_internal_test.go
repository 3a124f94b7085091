package proxy

import (
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc/connectivity"

	"github.com/hopwatch/hopwatch/routes"
)

// TestUpstreamSuccessor: an upstream whose endpoint set alone changes
// gets a successor that shares the breaker, the bulkhead, the transport
// and the connections of the endpoints that remain, with their balancing
// state; the connections of the endpoints that left close only when the
// predecessor is closed (its generation drained).
func TestUpstreamSuccessor(t *testing.T) {
	spec := routes.Upstream{Name: "svc", Protocol: routes.UpstreamGRPC, Endpoints: []string{"dns:///svc.test:7000"},
		MaxConcurrent: 10, Breaker: &routes.Breaker{}}
	a := resolvedEndpoint{addr: "127.0.0.1:7000", authority: "svc.test:7000"}
	b := resolvedEndpoint{addr: "127.0.0.2:7000", authority: "svc.test:7000"}
	c := resolvedEndpoint{addr: "127.0.0.3:7000", authority: "svc.test:7000"}
	old, err := buildUpstream(spec, []resolvedEndpoint{a, b}, nil, time.Now, nil, slog.Default(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	old.eps[1].observe(time.Now(), 42*time.Millisecond)
	succ, err := buildUpstream(spec, []resolvedEndpoint{b, c}, old, time.Now, nil, slog.Default(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"breaker shared", succ.breaker == old.breaker && succ.breaker != nil},
		{"bulkhead shared", succ.bulkhead == old.bulkhead && succ.bulkhead != nil},
		{"transport shared", succ.transport == old.transport},
		{"remaining endpoint keeps its connection", succ.conns[0] == old.conns[1]},
		{"new endpoint gets a connection", succ.conns[1] != old.conns[0] && succ.conns[1] != old.conns[1]},
		{"remaining endpoint keeps its latency average", succ.eps[0].cost(time.Unix(0, 0)) == old.eps[1].cost(time.Unix(0, 0))},
		{"ejector is the new set's", succ.ejector != old.ejector},
	} {
		if !tc.ok {
			t.Errorf("%s: no", tc.name)
		}
	}
	left := old.conns[0]
	if left.GetState() == connectivity.Shutdown {
		t.Fatal("the connection of the endpoint that left closed before its upstream did")
	}
	old.close()
	old.close() // idempotent
	if left.GetState() != connectivity.Shutdown {
		t.Error("the connection of the endpoint that left is still open after its upstream closed")
	}
	if succ.conns[0].GetState() == connectivity.Shutdown {
		t.Error("closing the predecessor closed a connection its successor uses")
	}
	succ.close()
	for i, cc := range succ.conns {
		if cc.GetState() != connectivity.Shutdown {
			t.Errorf("connection %d open after the last upstream closed", i)
		}
	}

	// With TLS, a DNS endpoint of another name changes the name to verify:
	// no successor.
	tlsSpec := spec
	tlsSpec.TLS = &routes.UpstreamTLS{InsecureSkipVerify: false}
	tlsSpec.Endpoints = []string{"dns:///svc.test:7000"}
	renamed := tlsSpec
	renamed.Endpoints = []string{"dns:///other.test:7000"}
	tlsUp, err := buildUpstream(tlsSpec, []resolvedEndpoint{a}, nil, time.Now, nil, slog.Default(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer tlsUp.close()
	if !tlsUp.sameButEndpoints(tlsSpec) || tlsUp.sameButEndpoints(renamed) {
		t.Error("a TLS upstream whose DNS name changed would keep verifying the old name")
	}
	// Nor from DNS to static endpoints, of the same host or another.
	for _, ep := range []string{"svc.test:7000", "10.0.0.5:7000", "other.test:7000"} {
		static := tlsSpec
		static.Endpoints = []string{ep}
		if tlsUp.sameButEndpoints(static) {
			t.Errorf("a TLS upstream moved from DNS to %s would keep verifying the DNS name", ep)
		}
	}

	// Any other change builds a new upstream that shares nothing.
	other := spec
	other.MaxConcurrent = 20
	fresh, err := buildUpstream(other, []resolvedEndpoint{b}, succ, time.Now, nil, slog.Default(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.close()
	if fresh.breaker == succ.breaker || fresh.pool == succ.pool {
		t.Error("an upstream whose settings changed shares its predecessor's state")
	}
}
