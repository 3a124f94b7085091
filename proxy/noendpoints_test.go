package proxy_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/hopwatch/hopwatch/routes"
)

// TestUpstreamWithoutEndpoints: an upstream whose xDS load assignment
// lists no endpoint (a service scaled to zero) is applied, and its calls
// fail at once, on every listener kind, with the status of an unreachable
// upstream; the proxy keeps serving its other upstreams.
func TestUpstreamWithoutEndpoints(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, &routes.Spec{
		Listeners: []routes.Listener{
			{Name: "relay", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC},
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, Relay: routes.ListenerRelayMessages},
			{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP},
		},
		Routes: []routes.Route{
			{Name: "none-relay", Listener: "relay", Match: routes.Match{GRPCService: holdService}, Upstream: "none-grpc"},
			{Name: "none-grpc", Listener: "grpc", Match: routes.Match{GRPCService: holdService}, Upstream: "none-grpc"},
			{Name: "none-http", Listener: "http", Match: routes.Match{PathPrefix: "/none/"}, Upstream: "none-http"},
			{Name: "echo-relay", Listener: "relay", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "echo-grpc", Listener: "grpc", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
		},
		Upstreams: []routes.Upstream{
			{Name: "none-grpc", Protocol: routes.UpstreamGRPC, EndpointsFromEDS: true},
			{Name: "none-http", Protocol: routes.UpstreamHTTP, EndpointsFromEDS: true},
			{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{echo.addr}},
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, kind := range []string{"relay", "grpc"} {
		t.Run(kind+" listener", func(t *testing.T) {
			cc := dial(t, p.Addr(kind).String())
			start := time.Now()
			o := unary(ctx, cc, "/"+holdService+"/Hold", nil, []byte("x"))
			if o.Code != codes.Unavailable {
				t.Fatalf("a call to an upstream without endpoints: %v, want UNAVAILABLE", o)
			}
			t.Logf("%v after %v", o.Code, time.Since(start))
			if o := unary(ctx, cc, "/"+echoService+"/Unary", nil, []byte("x")); o.Code != codes.OK {
				t.Fatalf("another upstream: %v", o)
			}
		})
	}
	t.Run("http listener", func(t *testing.T) {
		res, err := http.Get("http://" + p.Addr("http").String() + "/none/x")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503", res.StatusCode)
		}
		t.Logf("status %d", res.StatusCode)
	})
}
