package proxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// startBlackHole accepts connections and never answers: the upstream of a
// network that drops replies, or a process that is stuck.
func startBlackHole(t *testing.T) string {
	t.Helper()
	return serveTCP(t, func(c net.Conn) { io.Copy(io.Discard, c) }) // read everything, answer nothing
}

// startFirstResponseProxy is startProxy with a short first-response timeout.
func startFirstResponseProxy(t *testing.T, spec *routes.Spec, d time.Duration) *proxy.Proxy {
	t.Helper()
	p := proxy.New(proxy.Options{FirstResponseTimeout: d})
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, p) })
	return p
}

const firstResponse = 300 * time.Millisecond

// progressTimeout is the first-response timeout of the proxies that the
// slow clients go through: a client that sends progressChunks chunks
// progressGap apart takes longer than it in all, while each gap leaves
// most of it spare. The timer must not fire between two chunks, so the
// spare is what a loaded machine may stall for; with firstResponse
// (300ms, gaps of 60ms) a CI run met a 504 now and then.
const (
	progressTimeout = time.Second
	progressChunks  = 12
	progressGap     = progressTimeout / 10
)

// TestHTTPFirstResponseTimeout: a route without a timeout answers 504 when
// the upstream accepts the connection but never answers, instead of
// holding the client forever; but a response that has begun (a slow
// stream, SSE-like) runs past the timeout to its end; and a route whose
// timeout is negative leaves it to the client's own deadline.
func TestHTTPFirstResponseTimeout(t *testing.T) {
	for _, upProto := range []string{protoHTTP1, protoH2C} {
		t.Run(upProto+" upstream", func(t *testing.T) {
			hole := startBlackHole(t)
			stream := startHTTPUpstream(t, upProto, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// The response starts once the request body is in.
				n, _ := io.Copy(io.Discard, r.Body)
				w.Header().Set("X-Received", strconv.FormatInt(n, 10))
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, "data: first\n\n")
				w.(http.Flusher).Flush()
				select {
				case <-time.After(2 * firstResponse): // a healthy pause between tokens
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "data: last\n\n")
			}), nil)
			spec := &routes.Spec{
				Listeners: []routes.Listener{{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}},
				Routes: []routes.Route{
					{Name: "hole", Listener: "http", Match: routes.Match{PathPrefix: "/hole/"}, Upstream: "hole"},
					{Name: "hole-retry", Listener: "http", Match: routes.Match{PathPrefix: "/retry/"}, Upstream: "hole",
						Retry: &routes.Retry{Attempts: 2, On: []string{"503", "connect-failure"}}},
					{Name: "hole-none", Listener: "http", Match: routes.Match{PathPrefix: "/none/"}, Upstream: "hole", Timeout: -1},
					{Name: "stream", Listener: "http", Upstream: "stream"},
				},
				Upstreams: []routes.Upstream{
					{Name: "hole", Protocol: upstreamProtocol(upProto), Endpoints: []string{hole}},
					{Name: "stream", Protocol: upstreamProtocol(upProto), Endpoints: []string{hostPort(stream)}},
				},
			}
			p := startFirstResponseProxy(t, spec, firstResponse)
			slow := startFirstResponseProxy(t, spec, progressTimeout)
			for _, clientProto := range []string{protoHTTP1, protoH2C} {
				client := newHTTPClient(t, clientProto)
				get := func(path string, d time.Duration) (*http.Response, string, error) {
					ctx, cancel := context.WithTimeout(context.Background(), d)
					defer cancel()
					req, _ := http.NewRequestWithContext(ctx, "GET", proxyURL(p, "http")+path, nil)
					resp, err := client.Do(req)
					if err != nil {
						return nil, "", err
					}
					defer resp.Body.Close()
					b, err := io.ReadAll(resp.Body)
					return resp, string(b), err
				}
				for _, path := range []string{"/hole/x", "/retry/x"} {
					t.Run(clientProto+" client/black hole "+path, func(t *testing.T) {
						resp, body, err := get(path, waitLong)
						if err != nil {
							t.Fatal(err)
						}
						if resp.StatusCode != http.StatusGatewayTimeout || body != "hopwatch: upstream timeout\n" {
							t.Fatalf("got %d %q, want 504 hopwatch: upstream timeout", resp.StatusCode, body)
						}
					})
				}
				t.Run(clientProto+" client/stream outlives the timeout", func(t *testing.T) {
					resp, body, err := get("/s", waitLong)
					if err != nil {
						t.Fatal(err)
					}
					if resp.StatusCode != 200 || body != "data: first\n\ndata: last\n\n" {
						t.Fatalf("got %d %q, want the whole stream", resp.StatusCode, body)
					}
				})
				t.Run(clientProto+" client/slow upload outlives the timeout", func(t *testing.T) {
					// The client takes longer than the timeout to send its
					// body; the upstream answers once it has it all.
					pr, pw := io.Pipe()
					go func() {
						for range progressChunks {
							time.Sleep(progressGap)
							if _, err := pw.Write([]byte("chunk")); err != nil {
								return
							}
						}
						pw.Close()
					}()
					ctx, cancel := context.WithTimeout(context.Background(), waitLong)
					defer cancel()
					req, _ := http.NewRequestWithContext(ctx, "POST", proxyURL(slow, "http")+"/upload", pr)
					resp, err := client.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					pr.Close()
					if resp.StatusCode != 200 || resp.Header.Get("X-Received") != strconv.Itoa(5*progressChunks) || string(b) != "data: first\n\ndata: last\n\n" {
						t.Fatalf("got %d received=%s %q, want 200 with the whole body sent and the whole stream back",
							resp.StatusCode, resp.Header.Get("X-Received"), b)
					}
				})
				t.Run(clientProto+" client/negative timeout is none", func(t *testing.T) {
					// The client's own deadline, well past the first-response
					// timeout, is what ends the call.
					_, _, err := get("/none/x", 2*firstResponse)
					if !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("got %v, want the client's own deadline to end the call", err)
					}
				})
			}
		})
	}
}

// TestGRPCFirstResponseTimeout is the same for gRPC, on the gRPC listener
// and over the HTTP listener: a stuck upstream (the call arrives and is
// never answered) and a black-holed one end with DEADLINE_EXCEEDED and the
// upstream call is canceled, while a server stream whose headers came at
// once may pause longer than the timeout.
func TestGRPCFirstResponseTimeout(t *testing.T) {
	backend := startEcho(t)
	hole := startBlackHole(t)
	for _, lproto := range grpcListenerKinds {
		t.Run(lproto+" listener", func(t *testing.T) {
			spec := &routes.Spec{
				Listeners: []routes.Listener{inListener("in", lproto)},
				Routes: []routes.Route{
					{Name: "hole", Listener: "in", Match: routes.Match{GRPCMethod: "/hole.v1.Hole/Call"}, Upstream: "hole"},
					{Name: "echo-retry", Listener: "in", Match: routes.Match{Headers: map[string]string{"x-route": "retry"}}, Upstream: "echo",
						Retry: &routes.Retry{Attempts: 2, On: []string{"unavailable"}}},
					{Name: "echo", Listener: "in", Upstream: "echo"},
				},
				Upstreams: []routes.Upstream{
					{Name: "hole", Protocol: routes.UpstreamGRPC, Endpoints: []string{hole}},
					{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{backend.addr}},
				},
			}
			if lproto == "relay" {
				// Validation refuses retries on the relay.
				spec.Routes = slices.DeleteFunc(spec.Routes, func(r routes.Route) bool { return r.Retry != nil })
			}
			p := startFirstResponseProxy(t, spec, firstResponse)
			cc := dial(t, p.Addr("in").String())
			slowCC := dial(t, startFirstResponseProxy(t, spec, progressTimeout).Addr("in").String())
			// byProxy fails the test if the client's own deadline, not the
			// proxy, ended the call.
			byProxy := func(t *testing.T, ctx context.Context) {
				if ctx.Err() != nil {
					t.Fatal("the client's own deadline ended the call, not the proxy's first-response timeout")
				}
			}

			t.Run("stuck upstream", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), waitLong)
				defer cancel()
				o := unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("x-block", "1"), []byte("q"))
				if o.Code != codes.DeadlineExceeded || o.Message != "hopwatch: upstream timeout" {
					t.Fatalf("got %v, want DEADLINE_EXCEEDED from hopwatch", o)
				}
				byProxy(t, ctx)
				select {
				case <-backend.canceled:
				case <-time.After(waitLong):
					t.Fatal("the upstream call was not canceled")
				}
			})
			t.Run("stuck upstream, route with retries", func(t *testing.T) {
				if lproto == "relay" {
					t.Skip("no retries on the relay")
				}
				ctx, cancel := context.WithTimeout(context.Background(), waitLong)
				defer cancel()
				o := stream(ctx, cc, "/"+echoService+"/ClientStream", metadata.Pairs("x-block", "1", "x-route", "retry"), [][]byte{[]byte("q")})
				if o.Code != codes.DeadlineExceeded || o.Message != "hopwatch: upstream timeout" {
					t.Fatalf("got %v, want DEADLINE_EXCEEDED from hopwatch", o)
				}
				byProxy(t, ctx)
				select {
				case <-backend.canceled:
				case <-time.After(waitLong):
					t.Fatal("the upstream call was not canceled")
				}
			})
			t.Run("black hole", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), waitLong)
				defer cancel()
				o := unary(ctx, cc, "/hole.v1.Hole/Call", nil, []byte("q"))
				if o.Code != codes.DeadlineExceeded || o.Message != "hopwatch: upstream timeout" {
					t.Fatalf("got %v, want DEADLINE_EXCEEDED from hopwatch", o)
				}
				byProxy(t, ctx)
			})
			for _, route := range []string{"plain", "retry"} {
				t.Run("slow client stream outlives the timeout, "+route+" route", func(t *testing.T) {
					if lproto == "relay" && route == "retry" {
						t.Skip("no retries on the relay")
					}
					// The upstream answers a client stream once it has ended;
					// the client takes longer than the timeout to send it.
					ctx, cancel := context.WithTimeout(context.Background(), waitLong)
					defer cancel()
					ctx = metadata.AppendToOutgoingContext(ctx, "x-route", route)
					cs, err := slowCC.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true}, "/"+echoService+"/ClientStream")
					if err != nil {
						t.Fatal(err)
					}
					for range progressChunks {
						time.Sleep(progressGap)
						if err := cs.SendMsg(wrapperspb.Bytes([]byte("chunk"))); err != nil {
							t.Fatalf("send: %v", err)
						}
					}
					if err := cs.CloseSend(); err != nil {
						t.Fatal(err)
					}
					out := new(wrapperspb.BytesValue)
					if err := cs.RecvMsg(out); err != nil || string(out.Value) != strings.Repeat("chunk", progressChunks) {
						t.Fatalf("got %q, %v; want every chunk back", out.Value, err)
					}
				})
			}
			t.Run("server stream outlives the timeout", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), waitLong)
				defer cancel()
				md := metadata.Pairs("x-count", "2", "x-size", "8", "x-sleep-ms", strconv.Itoa(int(2*firstResponse/time.Millisecond)))
				o := stream(ctx, cc, "/"+echoService+"/ServerStream", md, [][]byte{[]byte("q")})
				if o.Code != codes.OK || len(o.Msgs) != 2 {
					t.Fatalf("got %v, want OK with 2 messages", o)
				}
			})
		})
	}
}

// TestUnreachableMessage: when no endpoint accepts a connection, every
// path answers with hopwatch's documented words, not grpc-go's or net's
// text (which also names upstream addresses).
func TestUnreachableMessage(t *testing.T) {
	t.Run("http client", func(t *testing.T) {
		p := startProxy(t, singleRouteSpec(routes.UpstreamHTTP, deadAddr(t)))
		client := newHTTPClient(t, protoHTTP1)
		st, body := get(t, client, "GET", proxyURL(p, "http")+"/x", nil)
		if st != http.StatusServiceUnavailable || body != "hopwatch: upstream unreachable\n" {
			t.Fatalf("got %d %q", st, body)
		}
	})
	for _, lproto := range grpcListenerKinds {
		for _, resilient := range []bool{false, true} {
			if resilient && lproto == "relay" {
				continue // validation refuses retries on the relay
			}
			name := lproto + " listener"
			if resilient {
				name += ", route with retries"
			}
			t.Run(name, func(t *testing.T) {
				rt := routes.Route{Name: "echo", Listener: "in", Upstream: "echo"}
				if resilient {
					rt.Retry = &routes.Retry{Attempts: 2, On: []string{"unavailable"}}
				}
				spec := &routes.Spec{
					Listeners: []routes.Listener{inListener("in", lproto)},
					Routes:    []routes.Route{rt},
					Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{deadAddr(t)}}},
				}
				p := startProxy(t, spec)
				cc := dial(t, p.Addr("in").String())
				for i := range 2 { // the second finds the endpoint marked down
					ctx, cancel := context.WithTimeout(context.Background(), waitLong)
					o := unary(ctx, cc, "/"+echoService+"/Unary", nil, []byte("q"))
					cancel()
					if o.Code != codes.Unavailable || o.Message != "hopwatch: upstream unreachable" {
						t.Fatalf("call %d: %v, want UNAVAILABLE %q", i, o, "hopwatch: upstream unreachable")
					}
					if strings.Contains(o.Message, "127.0.0.1") {
						t.Fatalf("call %d: message names the upstream: %q", i, o.Message)
					}
				}
			})
		}
	}
}
