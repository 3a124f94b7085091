package proxy_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// observed is everything a gRPC client can see of one call.
type observed struct {
	Header  metadata.MD
	Trailer metadata.MD
	Msgs    []string // length and hash of each response message
	Code    codes.Code
	Message string
	Details []string
}

// String shows metadata in full (metadata.MD's own String redacts values).
func (o observed) String() string {
	return fmt.Sprintf("header=%#v trailer=%#v msgs=%d %v code=%v msg=%q details=%q",
		map[string][]string(o.Header), map[string][]string(o.Trailer), len(o.Msgs), firstN(o.Msgs, 3), o.Code, o.Message, o.Details)
}

func firstN(s []string, n int) []string { return s[:min(n, len(s))] }

func summarize(b []byte) string {
	return fmt.Sprintf("len=%d sha=%x", len(b), sha256.Sum256(b))
}

func observe(hdr, trl metadata.MD, msgs []string, err error) observed {
	st := status.Convert(err)
	o := observed{Header: hdr, Trailer: trl, Msgs: msgs, Code: st.Code(), Message: st.Message()}
	for _, d := range st.Proto().GetDetails() {
		o.Details = append(o.Details, prototext.Format(d))
	}
	return o
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func unary(ctx context.Context, cc *grpc.ClientConn, method string, md metadata.MD, payload []byte) observed {
	var hdr, trl metadata.MD
	out := new(wrapperspb.BytesValue)
	err := cc.Invoke(metadata.NewOutgoingContext(ctx, md), method, wrapperspb.Bytes(payload), out,
		grpc.Header(&hdr), grpc.Trailer(&trl))
	var msgs []string
	if err == nil {
		msgs = []string{summarize(out.Value)}
	}
	return observe(hdr, trl, msgs, err)
}

func stream(ctx context.Context, cc *grpc.ClientConn, method string, md metadata.MD, sends [][]byte) observed {
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	cs, err := cc.NewStream(metadata.NewOutgoingContext(ctx, md), desc, method)
	if err != nil {
		return observe(nil, nil, nil, err)
	}
	for _, s := range sends {
		if err := cs.SendMsg(wrapperspb.Bytes(s)); err != nil {
			break // the status comes from RecvMsg
		}
	}
	cs.CloseSend()
	var msgs []string
	for {
		out := new(wrapperspb.BytesValue)
		err = cs.RecvMsg(out)
		if err != nil {
			break
		}
		msgs = append(msgs, summarize(out.Value))
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	hdr, _ := cs.Header()
	return observe(hdr, cs.Trailer(), msgs, err)
}

// grpcProxy starts a proxy with a gRPC and an HTTP listener in front of
// backend: on both, test.v1.Echo is routed, and on the gRPC listener a
// second route sends every other service of "catchall" there too. A third
// listener, "relay", is a gRPC listener with relay: frames and the same
// routes as "grpc" (p.Addr("relay")). "grpc-res" and "relay-res" route
// test.v1.Echo with a retry policy, on each kind of gRPC listener: the
// resilient path, which the relay serves through its message adapter.
func grpcProxy(t testing.TB, backend string) (*proxy.Proxy, string, string) {
	t.Helper()
	p := proxy.New(proxy.Options{})
	spec := &routes.Spec{
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: routes.ListenerRelayMessages},
			{Name: "http", Address: "127.0.0.1:0", Protocol: "http"},
			{Name: "relay", Address: "127.0.0.1:0", Protocol: "grpc", Relay: routes.ListenerRelayFrames},
			{Name: "grpc-res", Address: "127.0.0.1:0", Protocol: "grpc", Relay: routes.ListenerRelayMessages},
			{Name: "relay-res", Address: "127.0.0.1:0", Protocol: "grpc", Relay: routes.ListenerRelayFrames},
		},
		Routes: []routes.Route{
			{Name: "echo", Listener: "grpc", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "catchall", Listener: "grpc", Match: routes.Match{Headers: map[string]string{"x-catchall": "1"}}, Upstream: "echo"},
			{Name: "echo-http", Listener: "http", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "echo-relay", Listener: "relay", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "catchall-relay", Listener: "relay", Match: routes.Match{Headers: map[string]string{"x-catchall": "1"}}, Upstream: "echo"},
			{Name: "echo-grpc-res", Listener: "grpc-res", Match: routes.Match{GRPCService: echoService}, Upstream: "echo", Retry: transparentRetry},
			{Name: "echo-relay-res", Listener: "relay-res", Match: routes.Match{GRPCService: echoService}, Upstream: "echo", Retry: transparentRetry},
		},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend}}},
	}
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
	})
	return p, p.Addr("grpc").String(), p.Addr("http").String()
}

// transparentRetry retries what no transparency case returns, so that a
// resilient route answers as a plain one.
var transparentRetry = &routes.Retry{Attempts: 2, On: []string{"resource_exhausted"}}

func bigPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}

// TestGRPCTransparency runs each call directly against the backend, through
// the proxy's gRPC listener (grpc-go and frame relay) and through its HTTP
// (h2c) listener, and requires the client to observe exactly the same
// thing all four ways.
func TestGRPCTransparency(t *testing.T) {
	backend := startEcho(t)
	p, grpcAddr, httpAddr := grpcProxy(t, backend.addr)
	paths := map[string]*grpc.ClientConn{
		"direct":         dial(t, backend.addr),
		"grpc-listener":  dial(t, grpcAddr),
		"http-listener":  dial(t, httpAddr),
		"relay-listener": dial(t, p.Addr("relay").String()),
		// Resilient routes: the relay's message adapter must be as
		// transparent as grpc-go's server stream.
		"grpc-listener resilient":  dial(t, p.Addr("grpc-res").String()),
		"relay-listener resilient": dial(t, p.Addr("relay-res").String()),
	}
	const m = "/" + echoService + "/"
	unicodeMsg := "  kb lookup failed: 知识库 \U0001F916 timeout\n\tline two  %41 "
	cases := []struct {
		name string
		call func(ctx context.Context, cc *grpc.ClientConn) observed
	}{
		{"unary", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return unary(ctx, cc, m+"Unary", nil, []byte("hello"))
		}},
		{"unary empty message", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return unary(ctx, cc, m+"Unary", nil, nil)
		}},
		{"unary 8 MiB", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return unary(ctx, cc, m+"Unary", nil, bigPayload(8<<20))
		}},
		{"request metadata incl -bin", func(ctx context.Context, cc *grpc.ClientConn) observed {
			md := metadata.Pairs("x-session-id", "s-1", "x-multi", "a", "x-multi", "b", "x-blob-bin", "\x00\x01\xff\xfe binary")
			return unary(ctx, cc, m+"Unary", md, []byte("q"))
		}},
		{"response headers and trailers incl -bin", func(ctx context.Context, cc *grpc.ClientConn) observed {
			md := metadata.Pairs("h-plain", "v1", "h-raw-bin", "\x00\xff\x10", "t-plain", "t1", "t-raw-bin", "\xde\xad\xbe\xef")
			return unary(ctx, cc, m+"Unary", md, []byte("q"))
		}},
		{"error status with unicode message and details", func(ctx context.Context, cc *grpc.ClientConn) observed {
			md := metadata.Pairs("x-status", strconv.Itoa(int(codes.FailedPrecondition)), "x-status-msg-bin", unicodeMsg, "t-after", "x")
			return unary(ctx, cc, m+"Unary", md, []byte("q"))
		}},
		{"every status code", func(ctx context.Context, cc *grpc.ClientConn) observed {
			var all observed
			for c := codes.Canceled; c <= codes.Unauthenticated; c++ {
				o := unary(ctx, cc, m+"Unary", metadata.Pairs("x-status", strconv.Itoa(int(c)), "x-status-msg-bin", c.String()), nil)
				all.Msgs = append(all.Msgs, fmt.Sprintf("%v %q %v", o.Code, o.Message, o.Details))
			}
			return all
		}},
		{"client streaming", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"ClientStream", metadata.Pairs("t-x", "1"), [][]byte{[]byte("a"), nil, []byte("ccc")})
		}},
		{"client streaming empty stream", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"ClientStream", nil, nil)
		}},
		{"client streaming large messages", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"ClientStream", nil, [][]byte{bigPayload(3 << 20), bigPayload(4 << 20)})
		}},
		{"server streaming", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"ServerStream", metadata.Pairs("x-count", "50", "x-size", "100", "h-a", "1", "t-b", "2"), [][]byte{nil})
		}},
		{"server streaming empty stream", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"ServerStream", metadata.Pairs("x-count", "0"), [][]byte{nil})
		}},
		{"server streaming 8 MiB messages", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"ServerStream", metadata.Pairs("x-count", "2", "x-size", strconv.Itoa(8<<20)), [][]byte{nil})
		}},
		{"server streaming then error", func(ctx context.Context, cc *grpc.ClientConn) observed {
			md := metadata.Pairs("x-count", "3", "x-size", "10", "x-status", strconv.Itoa(int(codes.ResourceExhausted)), "x-status-msg-bin", unicodeMsg)
			return stream(ctx, cc, m+"ServerStream", md, [][]byte{nil})
		}},
		{"bidi", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"Bidi", metadata.Pairs("h-x", "y"), [][]byte{[]byte("one"), nil, []byte("three"), bigPayload(1 << 20)})
		}},
		{"bidi empty stream", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, m+"Bidi", nil, nil)
		}},
		{"upstream ends the call while the client sends", func(ctx context.Context, cc *grpc.ClientConn) observed {
			sends := make([][]byte, 20)
			return stream(ctx, cc, m+"Bidi", metadata.Pairs("x-fail-after", "2"), sends)
		}},
		{"trailers-only error", func(ctx context.Context, cc *grpc.ClientConn) observed {
			md := metadata.Pairs("x-status", strconv.Itoa(int(codes.PermissionDenied)), "x-status-msg-bin", "no")
			return stream(ctx, cc, m+"Bidi", md, [][]byte{[]byte("x")})
		}},
		{"unknown method on a matched route", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return unary(ctx, cc, m+"NoSuchMethod", nil, []byte("q"))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			results := map[string]observed{}
			for name, cc := range paths {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				results[name] = tc.call(ctx, cc)
				cancel()
			}
			want := results["direct"]
			if tc.name != "every status code" && want.Code == codes.DeadlineExceeded {
				t.Fatalf("direct call timed out: %+v", want)
			}
			for name, got := range results {
				if !reflect.DeepEqual(got, want) {
					t.Errorf("%s differs from direct:\n got: %s\nwant: %s", name, got, want)
				}
			}
		})
	}
}

func TestGRPCRouting(t *testing.T) {
	backend := startEcho(t)
	p, grpcAddr, httpAddr := grpcProxy(t, backend.addr)
	relayAddr := p.Addr("relay").String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cases := []struct {
		name     string
		addr     string
		method   string
		md       metadata.MD
		wantCode codes.Code
		wantMsg  string
	}{
		{"no route on grpc listener", grpcAddr, "/other.v1.Svc/Do", nil, codes.Unimplemented, "hopwatch: no route for /other.v1.Svc/Do"},
		{"no route on http listener", httpAddr, "/other.v1.Svc/Do", nil, codes.Unimplemented, "hopwatch: no route for /other.v1.Svc/Do"},
		{"header-matched route reaches upstream's unknown service", grpcAddr, "/other.v1.Svc/Do", metadata.Pairs("x-catchall", "1"), codes.Unimplemented, "unknown service other.v1.Svc"},
		{"routed", grpcAddr, "/" + echoService + "/Unary", nil, codes.OK, ""},
		{"no route on relay listener", relayAddr, "/other.v1.Svc/Do", nil, codes.Unimplemented, "hopwatch: no route for /other.v1.Svc/Do"},
		{"header-matched route reaches upstream's unknown service on relay", relayAddr, "/other.v1.Svc/Do", metadata.Pairs("x-catchall", "1"), codes.Unimplemented, "unknown service other.v1.Svc"},
		{"routed on relay", relayAddr, "/" + echoService + "/Unary", nil, codes.OK, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := unary(ctx, dial(t, tc.addr), tc.method, tc.md, []byte("x"))
			if o.Code != tc.wantCode || o.Message != tc.wantMsg {
				t.Fatalf("got %v %q, want %v %q", o.Code, o.Message, tc.wantCode, tc.wantMsg)
			}
		})
	}
}
