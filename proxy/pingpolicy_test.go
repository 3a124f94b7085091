package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// gRPCListenerKinds are limitsProxy's gRPC listeners: grpc-go's server
// (relay: messages) and the frame relay. The HTTP listener's HTTP/2 server
// (x/net) has no keepalive policy of its own.
var gRPCListenerKinds = []string{"grpc", "relay"}

// pinger is a raw HTTP/2 client that sends PINGs, each once the previous
// one was acknowledged (a client that reads, so that no throttle stops
// it), every `every` at the soonest, and records how the server ended
// the connection.
type pinger struct {
	acks     int
	goAway   *http2.GoAwayFrame
	goAwayDD string
	closed   bool // the server closed the connection after the GOAWAY
}

// ping runs the pinger against addr until it sent max PINGs or the
// connection ended, within limit.
func ping(t *testing.T, addr string, every time.Duration, max int, limit time.Duration) pinger {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(limit))
	bw := bufio.NewWriter(nc)
	fr := http2.NewFramer(bw, nc)
	bw.WriteString(http2.ClientPreface)
	fr.WriteSettings()
	fr.WritePing(false, [8]byte{1})
	bw.Flush()
	var out pinger
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var ne net.Error
			out.closed = out.goAway != nil && !(errors.As(err, &ne) && ne.Timeout())
			return out
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
				bw.Flush()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
				bw.Flush()
				continue
			}
			out.acks++
			if out.acks >= max {
				return out
			}
			time.Sleep(every)
			fr.WritePing(false, [8]byte{byte(out.acks + 1)})
			bw.Flush()
		case *http2.GoAwayFrame:
			out.goAway = f
			out.goAwayDD = string(f.DebugData())
		}
	}
}

// TestTooManyPings: a client that pings more often than the keepalive
// policy allows is told GOAWAY ENHANCE_YOUR_CALM "too_many_pings" and its
// connection is closed after a few PINGs, on both kinds of gRPC listener
// (the relay answered such a client for as long as it liked); a client
// that pings within the policy keeps its connection; other clients keep
// theirs and are served.
func TestTooManyPings(t *testing.T) {
	hold := startHold(t)
	echo := startEcho(t)
	const minTime = 200 * time.Millisecond
	p := proxy.New(proxy.Options{})
	proxy.SetPingMinTime(p, minTime)
	if err := p.Apply(limitsSpec(routes.ListenerLimits{}, hold.addr, echo.addr)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, p) })
	cases := []struct {
		name   string
		every  time.Duration
		pings  int
		closed bool
	}{
		// The acks are read: only a policy stops this client.
		{"flood", 0, 10_000, true},
		{"just too often", minTime / 4, 20, true},
		// Within the policy, well past maxPingStrikes.
		{"paced at the policy", minTime + minTime/4, 6, false},
	}
	for _, kind := range gRPCListenerKinds {
		for _, tc := range cases {
			t.Run(kind+" listener, "+tc.name, func(t *testing.T) {
				addr := p.Addr(kind).String()
				other := dial(t, addr)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if o := unary(ctx, other, "/"+echoService+"/Unary", nil, []byte("before")); o.Code != codes.OK {
					t.Fatalf("other client before: %v", o)
				}
				got := ping(t, addr, tc.every, tc.pings, 10*time.Second)
				t.Logf("%d pings acknowledged; GOAWAY %v %q; closed %v", got.acks, got.goAway, got.goAwayDD, got.closed)
				if !tc.closed {
					if got.goAway != nil || got.acks < tc.pings {
						t.Fatalf("a client within the policy was cut off after %d of %d pings (GOAWAY %v %q)", got.acks, tc.pings, got.goAway, got.goAwayDD)
					}
				} else {
					if got.goAway == nil || got.goAway.ErrCode != http2.ErrCodeEnhanceYourCalm || got.goAwayDD != "too_many_pings" {
						t.Fatalf("after %d pings: GOAWAY %v debug %q, want ENHANCE_YOUR_CALM \"too_many_pings\"", got.acks, got.goAway, got.goAwayDD)
					}
					if !got.closed {
						t.Fatalf("the connection stayed open after GOAWAY")
					}
					if got.acks > 2*3 {
						t.Errorf("%d pings acknowledged before GOAWAY, want a handful", got.acks)
					}
				}
				// The other client's connection (opened before) is served.
				if o := unary(ctx, other, "/"+echoService+"/Unary", nil, []byte("after")); o.Code != codes.OK {
					t.Fatalf("other client after: %v", o)
				}
			})
		}
	}
}

// TestBDPPingsAreNotTooMany: grpc-go's client pings the server whenever it
// receives data after its previous ping was answered (BDP estimation),
// far more often than the keepalive policy's MinTime. grpc-go's server
// never counts a ping that follows headers or data it sent; neither may
// the relay, or every large download ends in "too_many_pings".
func TestBDPPingsAreNotTooMany(t *testing.T) {
	hold := startHold(t)
	echo := startEcho(t)
	p := limitsProxy(t, routes.ListenerLimits{}, hold.addr, echo.addr)
	for _, kind := range gRPCListenerKinds {
		t.Run(kind+" listener", func(t *testing.T) {
			cc := dial(t, p.Addr(kind).String())
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for round := range 3 {
				// 8 MiB in 64 KiB messages, three times on one connection.
				const count, size = 128, 64 << 10
				s, err := cc.NewStream(metadata.NewOutgoingContext(ctx, metadata.Pairs("x-count", strconv.Itoa(count), "x-size", strconv.Itoa(size))),
					&grpc.StreamDesc{ServerStreams: true}, "/"+echoService+"/ServerStream")
				if err != nil {
					t.Fatal(err)
				}
				if err := s.SendMsg(wrapperspb.Bytes(nil)); err != nil {
					t.Fatal(err)
				}
				s.CloseSend()
				n := 0
				for {
					m := new(wrapperspb.BytesValue)
					if err := s.RecvMsg(m); err != nil {
						if n != count {
							t.Fatalf("round %d: %d of %d messages, then %v", round, n, count, err)
						}
						break
					}
					n++
				}
				// Between downloads the connection is idle: the policy
				// applies again from here, and BDP pings stop.
				if o := unary(ctx, cc, "/"+echoService+"/Unary", nil, []byte("x")); o.Code != codes.OK {
					t.Fatalf("round %d: a call after the download: %v", round, o)
				}
			}
		})
	}
}
