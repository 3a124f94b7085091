package proxy_test

import (
	"context"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

func TestGRPCDeadlines(t *testing.T) {
	for _, kind := range []string{"grpc", "relay"} {
		t.Run(kind+" listener", func(t *testing.T) { testGRPCDeadlines(t, kind) })
	}
}

func testGRPCDeadlines(t *testing.T, kind string) {
	backend := startEcho(t)
	p := proxy.New(proxy.Options{})
	spec := &routes.Spec{
		Listeners: []routes.Listener{inListener("grpc", kind)},
		Routes: []routes.Route{
			{Name: "short", Listener: "grpc", Match: routes.Match{Headers: map[string]string{"x-short": "1"}}, Upstream: "echo", Timeout: 3 * time.Second},
			{Name: "echo", Listener: "grpc", Upstream: "echo"},
		},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
	}
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, p)
	cc := dial(t, p.Addr("grpc").String())
	cases := []struct {
		name          string
		clientTimeout time.Duration // 0: no deadline
		md            metadata.MD
		wantMax       int64 // upper bound of the deadline the upstream sees, ms; -1: none
	}{
		// Every deadline leaves the call seconds to complete on a loaded
		// machine; the bounds still tell each source of the deadline from
		// the others.
		{"client deadline propagates", 20 * time.Second, nil, 20000},
		{"no deadline stays none", 0, nil, -1},
		{"route timeout shortens the client's", 20 * time.Second, metadata.Pairs("x-short", "1"), 3000},
		{"route timeout applies without a client deadline", 0, metadata.Pairs("x-short", "1"), 3000},
		{"client deadline shorter than route timeout wins", 2 * time.Second, metadata.Pairs("x-short", "1"), 2000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.clientTimeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.clientTimeout)
				defer cancel()
			}
			md := metadata.Join(tc.md, metadata.Pairs("x-deadline", "1"))
			o := unary(ctx, cc, "/"+echoService+"/Unary", md, nil)
			if o.Code != codes.OK {
				t.Fatalf("call failed: %v", o)
			}
			got := o.Header["deadline-ms"]
			if len(got) != 1 {
				t.Fatalf("no deadline report in %v", o.Header)
			}
			if tc.wantMax < 0 {
				if got[0] != "none" {
					t.Fatalf("upstream saw deadline %sms, want none", got[0])
				}
				return
			}
			ms, err := strconv.ParseInt(got[0], 10, 64)
			if err != nil || ms <= 0 || ms > tc.wantMax {
				t.Fatalf("upstream saw deadline %q ms, want in (0, %d]", got[0], tc.wantMax)
			}
		})
	}
}

func TestGRPCCancellation(t *testing.T) {
	t.Run("client cancels: upstream call is canceled", func(t *testing.T) {
		backend := startEcho(t)
		p, grpcAddr, httpAddr := grpcProxy(t, backend.addr)
		for _, addr := range []string{grpcAddr, httpAddr, p.Addr("relay").String()} {
			ctx, cancel := context.WithCancel(context.Background())
			cs, err := dial(t, addr).NewStream(metadata.AppendToOutgoingContext(ctx, "x-block-after-header", "1"),
				&grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/"+echoService+"/Bidi")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cs.Header(); err != nil {
				t.Fatalf("%s: header: %v", addr, err)
			}
			cancel()
			select {
			case m := <-backend.canceled:
				if m != "Bidi" {
					t.Fatalf("canceled %q", m)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: upstream call not canceled after the client canceled", addr)
			}
		}
	})
	t.Run("client deadline expires: upstream call is canceled", func(t *testing.T) {
		backend := startEcho(t)
		p, grpcAddr, _ := grpcProxy(t, backend.addr)
		for _, addr := range []string{grpcAddr, p.Addr("relay").String()} {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			o := unary(ctx, dial(t, addr), "/"+echoService+"/Unary", metadata.Pairs("x-block", "1"), nil)
			cancel()
			if o.Code != codes.DeadlineExceeded {
				t.Fatalf("%s: got %v, want DeadlineExceeded", addr, o.Code)
			}
			select {
			case <-backend.canceled:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: upstream call still running after the deadline", addr)
			}
		}
	})
	t.Run("upstream goes away: client sees the call end", func(t *testing.T) {
		backend := startEcho(t)
		p, grpcAddr, httpAddr := grpcProxy(t, backend.addr)
		var streams []grpc.ClientStream
		for _, addr := range []string{grpcAddr, httpAddr, p.Addr("relay").String()} {
			cs, err := dial(t, addr).NewStream(metadata.AppendToOutgoingContext(context.Background(), "x-block-after-header", "1"),
				&grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/"+echoService+"/Bidi")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cs.Header(); err != nil {
				t.Fatal(err)
			}
			streams = append(streams, cs)
		}
		backend.srv.Stop() // closes connections under the calls
		for i, cs := range streams {
			done := make(chan error, 1)
			go func() { done <- cs.RecvMsg(new(wrapperspb.BytesValue)) }()
			select {
			case err := <-done:
				if c := status.Code(err); c != codes.Unavailable && c != codes.Canceled && c != codes.Internal {
					t.Fatalf("stream %d ended with %v, want an error status", i, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("stream %d still open after the upstream went away", i)
			}
		}
	})
}

func TestGRPCMessageLimit(t *testing.T) {
	for _, kind := range []string{"grpc", "relay"} {
		t.Run(kind+" listener", func(t *testing.T) { testGRPCMessageLimit(t, kind) })
	}
}

func testGRPCMessageLimit(t *testing.T, kind string) {
	backend := startEcho(t)
	p := proxy.New(proxy.Options{})
	l := inListener("grpc", kind)
	l.MaxMessageBytes = 1 << 20
	spec := &routes.Spec{
		Listeners: []routes.Listener{l},
		Routes:    []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo"}},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
	}
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, p)
	cc := dial(t, p.Addr("grpc").String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if o := unary(ctx, cc, "/"+echoService+"/Unary", nil, bigPayload(2<<20)); o.Code != codes.ResourceExhausted {
		t.Fatalf("2 MiB over a 1 MiB limit: got %v, want ResourceExhausted", o)
	}
	if o := unary(ctx, cc, "/"+echoService+"/Unary", nil, bigPayload(512<<10)); o.Code != codes.OK {
		t.Fatalf("512 KiB under the limit: got %v", o)
	}
}

func shutdown(t testing.TB, p *proxy.Proxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// TestApplyMovesListener: a reload that moves a listener to another
// address serves there at once, stops accepting on the old address, and
// lets the call in flight on the old one finish.
func TestApplyMovesListener(t *testing.T) {
	for _, kind := range []string{"grpc", "relay"} {
		t.Run(kind+" listener", func(t *testing.T) { testApplyMovesListener(t, kind) })
	}
}

func testApplyMovesListener(t *testing.T, kind string) {
	backend := startEcho(t)
	p := proxy.New(proxy.Options{DrainTimeout: 10 * time.Second})
	defer shutdown(t, p)
	spec := func(addr string) *routes.Spec {
		l := inListener("grpc", kind)
		l.Address = addr
		return &routes.Spec{
			Listeners: []routes.Listener{l},
			Routes:    []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo"}},
			Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
		}
	}
	if err := p.Apply(spec("127.0.0.1:0")); err != nil {
		t.Fatal(err)
	}
	oldAddr := p.Addr("grpc").String()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A stream in flight on the old address.
	cs, err := dial(t, oldAddr).NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/"+echoService+"/Bidi")
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(wrapperspb.Bytes([]byte("before"))); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(new(wrapperspb.BytesValue)); err != nil {
		t.Fatal(err)
	}

	if err := p.Apply(spec("127.0.0.2:0")); err != nil { // moved
		t.Fatal(err)
	}
	newAddr := p.Addr("grpc").String()
	if newAddr == oldAddr || !strings.HasPrefix(newAddr, "127.0.0.2:") {
		t.Fatalf("listener at %s after the move, want 127.0.0.2:*", newAddr)
	}
	if o := unary(ctx, dial(t, newAddr), "/"+echoService+"/Unary", nil, []byte("x")); o.Code != codes.OK {
		t.Fatalf("new address: %v", o)
	}
	if c, err := net.Dial("tcp", oldAddr); err == nil {
		c.Close()
		t.Fatalf("old address %s still accepts connections", oldAddr)
	}
	// The stream that started before the move finishes normally.
	if err := cs.SendMsg(wrapperspb.Bytes([]byte("after"))); err != nil {
		t.Fatal(err)
	}
	out := new(wrapperspb.BytesValue)
	if err := cs.RecvMsg(out); err != nil || string(out.Value) != "after" {
		t.Fatalf("in-flight stream after the move: %q %v", out.Value, err)
	}
	cs.CloseSend()
	if err := cs.RecvMsg(out); err != io.EOF {
		t.Fatalf("in-flight stream end: %v", err)
	}
}

// TestFailedApplyReleasesListeners: an apply that fails after building
// gRPC listeners (one whose port is taken, or a valid one dropped with the
// plan because a later one failed) releases them, grpc-go's stream
// workers included (relay: messages), and so does the frame relay; a
// control plane resending a refused version once a second must not grow
// the process by a worker pool each time.
func TestFailedApplyReleasesListeners(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		backend := startEcho(t)
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		p := proxy.New(proxy.Options{})
		defer shutdown(t, p)
		good := routes.Listener{Name: "a", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}
		if err := p.Apply(&routes.Spec{
			Listeners: []routes.Listener{good},
			Routes:    []routes.Route{{Name: "echo", Listener: "a", Upstream: "echo"}},
			Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
		}); err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name      string
			listeners []routes.Listener
		}{
			{"the new listener's port is taken", []routes.Listener{good, {Name: "b", Address: taken.Addr().String(), Protocol: "grpc", Relay: relay}}},
			{"a bound listener dropped with its plan", []routes.Listener{good, {Name: "c", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}, {Name: "d", Address: taken.Addr().String(), Protocol: "grpc", Relay: relay}}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				spec := &routes.Spec{
					Listeners: tc.listeners,
					Routes:    []routes.Route{{Name: "echo", Listener: "a", Upstream: "echo"}},
					Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
				}
				if err := p.Apply(spec); err == nil {
					t.Fatal("apply on a taken port succeeded")
				}
				base := runtime.NumGoroutine()
				for range 20 {
					if err := p.Apply(spec); err == nil {
						t.Fatal("apply on a taken port succeeded")
					}
				}
				// Without the release every failed apply leaves a pool of
				// 16×GOMAXPROCS workers (≥ 320 goroutines over 20 applies).
				var now int
				if !eventually(5*time.Second, func() bool { now = runtime.NumGoroutine(); return now <= base+10 }) {
					t.Fatalf("goroutines: %d before 20 failed applies, %d after", base, now)
				}
				// The listener that was serving still serves.
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if o := unary(ctx, dial(t, p.Addr("a").String()), "/"+echoService+"/Unary", nil, []byte("x")); o.Code != codes.OK {
					t.Fatalf("after failed applies: %v", o)
				}
			})
		}
	})
}
