package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/routes"
)

// deadAddr returns a loopback address that refuses connections for the
// whole test (testkit.DeadAddr holds the port).
func deadAddr(t testing.TB) string { return testkit.DeadAddr(t) }

// countingUpstream echoes the request body (or "ok") after delay, and counts
// the requests and the connections it receives.
type countingUpstream struct {
	addr  string
	hits  atomic.Int64
	conns atomic.Int64 // connections opened to it (http.StateNew)
}

func startCounting(t testing.TB, proto string, delay time.Duration) *countingUpstream {
	t.Helper()
	u := &countingUpstream{}
	srv := startHTTPUpstream(t, proto, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		u.hits.Add(1)
		if delay > 0 {
			timer := time.NewTimer(delay)
			defer timer.Stop()
			select {
			case <-timer.C:
			case <-r.Context().Done():
				return
			}
		}
		if len(b) == 0 {
			b = []byte("ok")
		}
		w.Write(b)
	}), func(s *http.Server) {
		s.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				u.conns.Add(1)
			}
		}
	})
	u.addr = hostPort(srv)
	return u
}

// get sends one request through the proxy and returns status and body.
func get(t testing.TB, c *http.Client, method, url string, body io.Reader) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp.StatusCode, string(b)
}

// TestUpstreamRoundRobin checks that round_robin spreads sequential
// requests evenly over the endpoints.
func TestUpstreamRoundRobin(t *testing.T) {
	for _, upProto := range []string{protoHTTP1, protoH2C} {
		t.Run(upProto, func(t *testing.T) {
			var ups []*countingUpstream
			var eps []string
			for range 3 {
				u := startCounting(t, upProto, 0)
				ups = append(ups, u)
				eps = append(eps, u.addr)
			}
			spec := singleRouteSpec(upstreamProtocol(upProto), eps...)
			spec.Upstreams[0].Balance = routes.BalanceRoundRobin
			p := startProxy(t, spec)
			client := newHTTPClient(t, protoHTTP1)
			const n = 30
			for i := range n {
				if st, body := get(t, client, "GET", proxyURL(p, "http")+"/rr", nil); st != http.StatusOK {
					t.Fatalf("request %d: %d %q", i, st, body)
				}
			}
			for i, u := range ups {
				if got := u.hits.Load(); got != n/3 {
					t.Errorf("endpoint %d got %d requests, want %d (all: %v)", i, got, n/3, hitCounts(ups))
				}
			}
		})
	}
}

func hitCounts(ups []*countingUpstream) []int64 {
	var out []int64
	for _, u := range ups {
		out = append(out, u.hits.Load())
	}
	return out
}

// TestUpstreamP2CAvoidsSlowEndpoint checks that p2c_ewma (explicit or by
// default) sends most traffic away from an endpoint that is much slower than
// the others. Only request counts are asserted. The slow endpoint's delay is
// far above any scheduling hiccup of a loaded machine, so that a fast
// endpoint's peak latency never overtakes it.
func TestUpstreamP2CAvoidsSlowEndpoint(t *testing.T) {
	cases := []struct {
		name    string
		proto   string
		balance string
	}{
		{"http p2c_ewma", protoHTTP1, routes.BalanceP2CEWMA},
		{"http default balance", protoHTTP1, ""},
		{"h2c p2c_ewma", protoH2C, routes.BalanceP2CEWMA},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			slow := startCounting(t, tc.proto, 250*time.Millisecond)
			fast1 := startCounting(t, tc.proto, 0)
			fast2 := startCounting(t, tc.proto, 0)
			ups := []*countingUpstream{fast1, slow, fast2}
			spec := singleRouteSpec(upstreamProtocol(tc.proto), fast1.addr, slow.addr, fast2.addr)
			spec.Upstreams[0].Balance = tc.balance
			p := startProxy(t, spec)
			client := newHTTPClient(t, protoHTTP1)
			send := func(n int) {
				for i := range n {
					if st, body := get(t, client, "GET", proxyURL(p, "http")+"/p2c", nil); st != http.StatusOK {
						t.Fatalf("request %d: %d %q", i, st, body)
					}
				}
			}
			send(10) // warm-up: every endpoint's latency gets observed
			for _, u := range ups {
				u.hits.Store(0)
			}
			const n = 100
			send(n)
			counts := hitCounts(ups)
			if total := counts[0] + counts[1] + counts[2]; total != n {
				t.Fatalf("endpoints received %d requests, want %d: %v", total, n, counts)
			}
			if counts[1] >= n/5 {
				t.Errorf("slow endpoint got %d of %d requests, want < %d (fast, slow, fast: %v)", counts[1], n, n/5, counts)
			}
		})
	}
}

// TestUpstreamSkipsDeadEndpoints checks that endpoints refusing connections
// are skipped without failing the request, request bodies included (they
// are sent again to the next endpoint), and that each request reaches a
// live endpoint exactly once.
func TestUpstreamSkipsDeadEndpoints(t *testing.T) {
	cases := []struct {
		name    string
		proto   string
		balance string
	}{
		{"http p2c_ewma", protoHTTP1, routes.BalanceP2CEWMA},
		{"http round_robin", protoHTTP1, routes.BalanceRoundRobin},
		{"h2c p2c_ewma", protoH2C, routes.BalanceP2CEWMA},
		{"h2c round_robin", protoH2C, routes.BalanceRoundRobin},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			live1 := startCounting(t, tc.proto, 0)
			live2 := startCounting(t, tc.proto, 0)
			spec := singleRouteSpec(upstreamProtocol(tc.proto), deadAddr(t), live1.addr, deadAddr(t), live2.addr)
			spec.Upstreams[0].Balance = tc.balance
			p := startProxy(t, spec)
			client := newHTTPClient(t, protoHTTP1)
			const n = 24
			for i := range n {
				method, want := "GET", "ok"
				var body io.Reader
				switch i % 3 {
				case 1:
					method, want = "POST", fmt.Sprintf("body of request %d", i)
					body = strings.NewReader(want)
				case 2: // unknown length: chunked / streamed upstream
					method, want = "POST", fmt.Sprintf("streamed body of request %d", i)
					body = io.MultiReader(strings.NewReader(want))
				}
				st, got := get(t, client, method, proxyURL(p, "http")+"/dead", body)
				if st != http.StatusOK || got != want {
					t.Fatalf("request %d: %d %q, want 200 %q", i, st, got, want)
				}
			}
			if total := live1.hits.Load() + live2.hits.Load(); total != n {
				t.Errorf("live endpoints received %d requests, want %d", total, n)
			}
		})
	}
}

// TestUpstreamSkipsDeadGRPCEndpoints is the same for gRPC upstreams, from
// the gRPC listener and from the HTTP listener.
func TestUpstreamSkipsDeadGRPCEndpoints(t *testing.T) {
	backend := startEcho(t)
	for _, balance := range []string{routes.BalanceP2CEWMA, routes.BalanceRoundRobin} {
		for _, lproto := range []string{routes.ListenerGRPC, routes.ListenerHTTP} {
			t.Run(balance+"/"+lproto+" listener", func(t *testing.T) {
				spec := &routes.Spec{
					Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: lproto}},
					Routes:    []routes.Route{{Name: "echo", Listener: "in", Upstream: "echo"}},
					Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Balance: balance,
						Endpoints: []string{deadAddr(t), backend.addr, deadAddr(t)}}},
				}
				p := startProxy(t, spec)
				cc := dial(t, p.Addr("in").String())
				for i := range 12 {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					payload := []byte(fmt.Sprintf("call %d", i))
					o := unary(ctx, cc, "/"+echoService+"/Unary", nil, payload)
					cancel()
					if o.Code != codes.OK || len(o.Msgs) != 1 || o.Msgs[0] != summarize(payload) {
						t.Fatalf("call %d: %v", i, o)
					}
				}
			})
		}
	}
}

// TestUpstreamAllDead checks the answer when no endpoint accepts a
// connection: 503 for HTTP clients, UNAVAILABLE for gRPC clients on either
// listener.
func TestUpstreamAllDead(t *testing.T) {
	t.Run("http", func(t *testing.T) {
		cases := []struct {
			name   string
			proto  string
			method string
			body   string
		}{
			{"http upstream GET", protoHTTP1, "GET", ""},
			{"http upstream POST", protoHTTP1, "POST", "payload"},
			{"h2c upstream GET", protoH2C, "GET", ""},
			{"h2c upstream POST", protoH2C, "POST", "payload"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				p := startProxy(t, singleRouteSpec(upstreamProtocol(tc.proto), deadAddr(t), deadAddr(t), deadAddr(t)))
				for _, clientProto := range []string{protoHTTP1, protoH2C} {
					client := newHTTPClient(t, clientProto)
					for i := range 3 { // later requests find the endpoints marked down
						var body io.Reader
						if tc.body != "" {
							body = bytes.NewReader([]byte(tc.body))
						}
						st, got := get(t, client, tc.method, proxyURL(p, "http")+"/x", body)
						if st != http.StatusServiceUnavailable || !strings.HasPrefix(got, "hopwatch: upstream unreachable") {
							t.Fatalf("%s client, request %d: %d %q, want 503 from hopwatch", clientProto, i, st, got)
						}
					}
				}
			})
		}
	})
	t.Run("grpc", func(t *testing.T) {
		for _, lproto := range []string{routes.ListenerGRPC, routes.ListenerHTTP} {
			t.Run(lproto+" listener", func(t *testing.T) {
				spec := &routes.Spec{
					Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: lproto}},
					Routes:    []routes.Route{{Name: "echo", Listener: "in", Upstream: "echo"}},
					Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{deadAddr(t), deadAddr(t)}}},
				}
				p := startProxy(t, spec)
				cc := dial(t, p.Addr("in").String())
				for i := range 3 {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					o := unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("x-a", "1"), []byte("q"))
					cancel()
					if o.Code != codes.Unavailable {
						t.Fatalf("call %d: %v, want Unavailable", i, o)
					}
				}
			})
		}
	})
}

// TestUpstreamKeepAlive checks that sequential requests reuse upstream
// connections instead of opening one each.
func TestUpstreamKeepAlive(t *testing.T) {
	for _, upProto := range []string{protoHTTP1, protoH2C} {
		for _, clientProto := range []string{protoHTTP1, protoH2C} {
			t.Run(upProto+" upstream/"+clientProto+" client", func(t *testing.T) {
				up := startCounting(t, upProto, 0)
				p := startProxy(t, singleRouteSpec(upstreamProtocol(upProto), up.addr))
				client := newHTTPClient(t, clientProto)
				const n = 50
				big := strings.Repeat("k", 64<<10)
				for i := range n {
					method, want := "GET", "ok"
					var body io.Reader
					switch i % 3 {
					case 1:
						method, want = "POST", big // larger than one read buffer
						body = strings.NewReader(want)
					case 2:
						method, want = "POST", "small"
						body = io.MultiReader(strings.NewReader(want))
					}
					if st, got := get(t, client, method, proxyURL(p, "http")+"/ka", body); st != http.StatusOK || got != want {
						t.Fatalf("request %d: %d %s", i, st, summarize([]byte(got)))
					}
				}
				if hits := up.hits.Load(); hits != n {
					t.Fatalf("upstream received %d requests, want %d", hits, n)
				}
				// Without reuse this would be n. A few more than one are
				// legitimate: net/http's HTTP/1.1 transport discards a
				// connection whose request-write goroutine has not reported
				// within 50ms when the response ends (a loaded machine), and
				// may dial anew if the next request comes before the previous
				// connection is back in the idle pool.
				if conns := up.conns.Load(); conns > 5 {
					t.Errorf("%d requests opened %d upstream connections, want at most 5", n, conns)
				}
			})
		}
	}
}
