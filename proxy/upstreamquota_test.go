package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/routes"
)

// quotaService is served by startQuotaBackend: Unary answers after
// quotaCallTime, Hold until the caller goes away.
const quotaService = "quota.v1.Svc"

const quotaCallTime = 20 * time.Millisecond

// quotaBackend is a grpc-go server that allows two concurrent streams
// per connection (SETTINGS_MAX_CONCURRENT_STREAMS 2), and counts the calls
// it ran and the most it ran at once.
type quotaBackend struct {
	addr                  string
	inflight, peak, total atomic.Int64
}

func startQuotaBackend(t testing.TB, maxStreams uint32, opts ...grpc.ServerOption) *quotaBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &quotaBackend{addr: ln.Addr().String()}
	srv := grpc.NewServer(append(opts, grpc.MaxConcurrentStreams(maxStreams),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			n := b.inflight.Add(1)
			defer b.inflight.Add(-1)
			b.total.Add(1)
			for p := b.peak.Load(); n > p && !b.peak.CompareAndSwap(p, n); p = b.peak.Load() {
			}
			in := new(wrapperspb.BytesValue)
			if err := ss.RecvMsg(in); err != nil {
				return err
			}
			method, _ := grpc.MethodFromServerStream(ss)
			if strings.HasSuffix(method, "/Hold") {
				<-ss.Context().Done()
				return ss.Context().Err()
			}
			time.Sleep(quotaCallTime)
			return ss.SendMsg(in)
		}))...)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return b
}

// quotaSpec is one gRPC listener (relay as given) routing quotaService to
// addr, with a route timeout (none for Hold).
func quotaSpec(relay, addr string, timeout time.Duration) *routes.Spec {
	return &routes.Spec{
		Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, Relay: relay}},
		Routes: []routes.Route{
			// Held calls end only when their caller goes away.
			{Name: "hold", Listener: "grpc", Match: routes.Match{GRPCMethod: "/" + quotaService + "/Hold"}, Upstream: "up", Timeout: -1},
			{Name: "quota", Listener: "grpc", Match: routes.Match{GRPCService: quotaService}, Upstream: "up", Timeout: timeout},
		},
		Upstreams: []routes.Upstream{{Name: "up", Protocol: routes.UpstreamGRPC, Endpoints: []string{addr}}},
	}
}

// TestUpstreamStreamQuota: the upstream allows two concurrent streams. A
// burst of calls on a fresh upstream connection (before the upstream's
// SETTINGS arrive) or beyond its limit all succeed, as grpc-go's client
// makes them wait for stream quota; the relay used to open them all and
// fail the ones the upstream refused (REFUSED_STREAM) with UNAVAILABLE.
// A call whose deadline passes while it waits ends DEADLINE_EXCEEDED and
// leaves no goroutine behind, and the upstream never runs more than two.
func TestUpstreamStreamQuota(t *testing.T) {
	const burst = 50
	forGRPCListeners(t, func(t *testing.T, relay string) {
		cases := []struct {
			name    string
			timeout time.Duration // the route's
			run     func(t *testing.T, cc *grpc.ClientConn, b *quotaBackend)
		}{
			{"burst on a fresh connection", 10 * time.Second, func(t *testing.T, cc *grpc.ClientConn, b *quotaBackend) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				codesSeen := make([]codes.Code, burst)
				var wg sync.WaitGroup
				for i := range burst {
					wg.Go(func() {
						codesSeen[i] = unary(ctx, cc, "/"+quotaService+"/Unary", nil, []byte("burst")).Code
					})
				}
				wg.Wait()
				failed := 0
				for i, c := range codesSeen {
					if c != codes.OK {
						failed++
						t.Errorf("call %d: %v", i, c)
					}
				}
				if failed > 0 {
					t.Fatalf("%d of %d calls failed", failed, burst)
				}
				if got := b.total.Load(); got != burst {
					t.Errorf("upstream ran %d calls, want %d", got, burst)
				}
			}},
			{"deadline while waiting for quota", 400 * time.Millisecond, func(t *testing.T, cc *grpc.ClientConn, b *quotaBackend) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var wg sync.WaitGroup
				defer wg.Wait()
				defer cancel()
				// Two calls hold the upstream's two streams.
				for range 2 {
					wg.Go(func() { unary(ctx, cc, "/"+quotaService+"/Hold", nil, []byte("hold")) })
				}
				if !eventually(5*time.Second, func() bool { return b.inflight.Load() == 2 }) {
					t.Fatalf("the holding calls did not arrive: %d", b.inflight.Load())
				}
				// The route's timeout (400ms) passes while this one waits;
				// the client's own deadline is far.
				cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer ccancel()
				start := time.Now()
				o := unary(cctx, cc, "/"+quotaService+"/Unary", nil, []byte("late"))
				if o.Code != codes.DeadlineExceeded {
					t.Fatalf("waiting call: %v, want DeadlineExceeded", o)
				}
				t.Logf("waiting call ended after %v: %v", time.Since(start).Round(time.Millisecond), o)
				// A caller that gives up while waiting is canceled.
				cctx2, ccancel2 := context.WithTimeout(context.Background(), 10*time.Second)
				defer ccancel2()
				go func() { time.Sleep(100 * time.Millisecond); ccancel2() }()
				if o := unary(cctx2, cc, "/"+quotaService+"/Unary", nil, []byte("gave up")); o.Code != codes.Canceled {
					t.Fatalf("canceled waiting call: %v", o)
				}
				cancel()
				wg.Wait()
				// The slots are back: calls run again.
				if o := unary(cctx, cc, "/"+quotaService+"/Unary", nil, []byte("after")); o.Code != codes.OK {
					t.Fatalf("a call after the holds ended: %v", o)
				}
				if got := b.total.Load(); got != 3 {
					t.Errorf("upstream ran %d calls, want 3 (2 holds, 1 after)", got)
				}
			}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				// Registered first, so it runs after the proxy and the
				// backend have shut down.
				before := goleak.IgnoreCurrent()
				t.Cleanup(func() { goleak.VerifyNone(t, before) })
				b := startQuotaBackend(t, 2)
				p := startProxy(t, quotaSpec(relay, b.addr, tc.timeout))
				cc := dial(t, p.Addr("grpc").String())
				tc.run(t, cc, b)
				if got := b.peak.Load(); got > 2 {
					t.Errorf("upstream ran %d calls at once, its limit is 2", got)
				}
			})
		}
	})
}

// refuser is a raw HTTP/2 gRPC upstream that refuses the streams refuse
// picks, by their number (1, 2, ...): with RST_STREAM REFUSED_STREAM, or
// with GOAWAY (last stream id 0) when goAway, after which that connection
// takes no more streams; when late, only once the request has ended (the
// client sent all of it on the stream). It answers the others with their
// request's size (requestSize).
type refuser struct {
	addr             string
	streams, refused atomic.Int64
}

func startRefuser(t testing.TB, refuse func(n int) bool, goAway, late bool) *refuser {
	t.Helper()
	r := &refuser{}
	r.addr = serveTCP(t, func(c net.Conn) { r.serve(c, refuse, goAway, late) })
	return r
}

func (r *refuser) serve(c net.Conn, refuse func(n int) bool, goAway, late bool) {
	defer c.Close()
	pre := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, pre); err != nil {
		return
	}
	bw := bufio.NewWriter(c)
	fr := http2.NewFramer(bw, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	block := func(fields ...string) []byte {
		hb.Reset()
		for i := 0; i < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return hb.Bytes()
	}
	fr.WriteSettings()
	bw.Flush()
	gone := false
	bodies := map[uint32][]byte{}
	refusing := map[uint32]bool{} // late refusals, at the request's end
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		var end uint32
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if gone {
				break
			}
			n := r.streams.Add(1)
			if late && refuse(int(n)) && !f.StreamEnded() {
				refusing[f.StreamID] = true
				break
			}
			if refuse(int(n)) {
				r.refused.Add(1)
				if goAway {
					fr.WriteGoAway(0, http2.ErrCodeNo, nil)
					gone = true
				} else {
					fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
				}
				break
			}
			bodies[f.StreamID] = []byte{}
			if f.StreamEnded() {
				end = f.StreamID
			}
		case *http2.DataFrame:
			if refusing[f.StreamID] {
				if f.Length > 0 {
					fr.WriteWindowUpdate(0, f.Length)
					fr.WriteWindowUpdate(f.StreamID, f.Length)
				}
				if f.StreamEnded() {
					delete(refusing, f.StreamID)
					r.refused.Add(1)
					fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
				}
				break
			}
			b, ok := bodies[f.StreamID]
			if ok {
				bodies[f.StreamID] = append(b, f.Data()...)
				if f.StreamEnded() {
					end = f.StreamID
				}
			}
			if l := f.Length; l > 0 {
				fr.WriteWindowUpdate(0, l)
				if ok && !f.StreamEnded() {
					fr.WriteWindowUpdate(f.StreamID, l)
				}
			}
		}
		if end != 0 {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: end, EndHeaders: true,
				BlockFragment: block(":status", "200", "content-type", "application/grpc")})
			fr.WriteData(end, false, requestSize(bodies[end]))
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: end, EndHeaders: true, EndStream: true,
				BlockFragment: block("grpc-status", "0")})
			delete(bodies, end)
		}
		if err := bw.Flush(); err != nil {
			return
		}
	}
}

// requestSize answers a request (one gRPC message, a BytesValue) with a
// BytesValue that holds the length of its value in decimal, or "bad".
func requestSize(body []byte) []byte {
	answer := "bad"
	in := new(wrapperspb.BytesValue)
	if len(body) >= 5 && int(binary.BigEndian.Uint32(body[1:5])) == len(body)-5 && proto.Unmarshal(body[5:], in) == nil {
		answer = strconv.Itoa(len(in.Value))
	}
	m, _ := proto.Marshal(wrapperspb.Bytes([]byte(answer)))
	out := make([]byte, 5, 5+len(m))
	binary.BigEndian.PutUint32(out[1:], uint32(len(m)))
	return append(out, m...)
}

// TestRefusedStreamRetried: a stream the upstream refuses (RST_STREAM
// REFUSED_STREAM) was not processed and is safe to retry (RFC 9113 §8.7);
// grpc-go's client retries it once, transparently, so the call succeeds
// when the upstream takes it the second time, and fails UNAVAILABLE when
// it refuses that too. The relay failed it at once.
func TestRefusedStreamRetried(t *testing.T) {
	cases := []struct {
		name    string
		refuse  func(n int) bool // by stream number
		goAway  bool             // refuse with GOAWAY, not RST_STREAM
		late    bool             // refuse once the request has ended
		size    int              // request message
		want    codes.Code
		streams int64 // the upstream saw
	}{
		{"first stream refused", func(n int) bool { return n == 1 }, false, false, 100, codes.OK, 2},
		{"first stream refused, 200 KiB request", func(n int) bool { return n == 1 }, false, false, 200 << 10, codes.OK, 2},
		{"first stream refused after the whole request", func(n int) bool { return n == 1 }, false, true, 200 << 10, codes.OK, 2},
		{"refused twice", func(n int) bool { return n <= 2 }, false, false, 100, codes.Unavailable, 2},
		{"refused twice, after the whole request", func(n int) bool { return n <= 2 }, false, true, 100, codes.Unavailable, 2},
		{"first stream above GOAWAY's last stream id", func(n int) bool { return n == 1 }, true, false, 100, codes.OK, 2},
	}
	forGRPCListeners(t, func(t *testing.T, relay string) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				r := startRefuser(t, tc.refuse, tc.goAway, tc.late)
				p := startProxy(t, quotaSpec(relay, r.addr, 10*time.Second))
				cc := dial(t, p.Addr("grpc").String())
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				payload := bytes.Repeat([]byte("r"), tc.size)
				out := new(wrapperspb.BytesValue)
				err := cc.Invoke(ctx, "/"+quotaService+"/Unary", wrapperspb.Bytes(payload), out)
				if got := status.Code(err); got != tc.want {
					t.Fatalf("call: %v, want %v", err, tc.want)
				}
				if tc.want == codes.OK && string(out.Value) != strconv.Itoa(len(payload)) {
					t.Errorf("the upstream took a request of %q bytes, want %d", out.Value, len(payload))
				}
				if got := r.streams.Load(); got != tc.streams {
					t.Errorf("upstream saw %d streams (%d refused), want %d", got, r.refused.Load(), tc.streams)
				}
			})
		}
	})
}

// TestUpstreamHeaderListLimit: the upstream advertises
// SETTINGS_MAX_HEADER_LIST_SIZE 1024. A call with more metadata than that
// fails INTERNAL before it is sent, as grpc-go's client fails it, and the
// upstream connection and its other calls go on. The relay sent it, and
// the grpc-go upstream closed the connection, failing every call on it.
func TestUpstreamHeaderListLimit(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		b := startQuotaBackend(t, 100, grpc.MaxHeaderListSize(1024))
		p := startProxy(t, quotaSpec(relay, b.addr, 10*time.Second))
		cc := dial(t, p.Addr("grpc").String())
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hctx, hcancel := context.WithCancel(ctx)
		defer hcancel()
		held := make(chan observed, 1)
		go func() { held <- unary(hctx, cc, "/"+quotaService+"/Hold", nil, []byte("hold")) }()
		if !eventually(5*time.Second, func() bool { return b.inflight.Load() == 1 }) {
			t.Fatal("the held call did not arrive")
		}
		o := unary(ctx, cc, "/"+quotaService+"/Unary", metadata.Pairs("x-big", strings.Repeat("a", 2000)), []byte("big"))
		if o.Code != codes.Internal || !strings.Contains(o.Message, "header list size to send violates the maximum size (1024 bytes)") {
			t.Errorf("call with 2000 bytes of metadata: %v, want INTERNAL header list size", o)
		}
		if o := unary(ctx, cc, "/"+quotaService+"/Unary", nil, []byte("small")); o.Code != codes.OK {
			t.Errorf("a call after it: %v", o)
		}
		hcancel()
		if o := <-held; o.Code != codes.Canceled {
			t.Errorf("the call in flight meanwhile ended %v, want Canceled (by its caller)", o)
		}
	})
}

// TestUpstreamWithoutSettings: an endpoint that accepts the connection but
// never sends its HTTP/2 SETTINGS (RFC 9113 §3.4). Calls through the relay
// wait for them (they may hold the endpoint's stream limit) only until
// dial_timeout, then fail UNAVAILABLE as for an endpoint that refuses
// connections, well before the route's timeout.
func TestUpstreamWithoutSettings(t *testing.T) {
	addr := startBlackHole(t)
	const dialTimeout, routeTimeout = 300 * time.Millisecond, 8 * time.Second
	spec := quotaSpec("", addr, routeTimeout)
	spec.Upstreams[0].DialTimeout = dialTimeout
	p := startProxy(t, spec)
	cc := dial(t, p.Addr("grpc").String())
	ctx, cancel := context.WithTimeout(context.Background(), 2*routeTimeout)
	defer cancel()
	start := time.Now()
	o := unary(ctx, cc, "/"+quotaService+"/Unary", nil, []byte("x"))
	took := time.Since(start)
	t.Logf("after %v: %v", took.Round(time.Millisecond), o)
	if o.Code != codes.Unavailable || !strings.Contains(o.Message, "upstream unreachable") {
		t.Errorf("call: %v, want UNAVAILABLE upstream unreachable", o)
	}
	if took >= routeTimeout {
		t.Errorf("the call took %v: it waited for the route's timeout", took)
	}
}

// serveTCP accepts loopback connections and runs handle on each in its
// own goroutine until the test ends; then it closes the listener and the
// connections and waits for the handlers. It returns the address.
func serveTCP(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { handle(c) })
		}
	})
	return ln.Addr().String()
}
