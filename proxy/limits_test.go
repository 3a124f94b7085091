package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// holdService is routed to a holdBackend on both listeners of limitsProxy.
const holdService = "flood.v1.Hold"

// holdBackend is a gRPC upstream whose every call sends headers at once and
// then stays open until the caller goes away; it counts the calls that
// reached it, and the most it had open at once.
type holdBackend struct {
	addr                  string
	inflight, peak, total atomic.Int64
}

func startHold(t testing.TB) *holdBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &holdBackend{addr: ln.Addr().String()}
	srv := grpc.NewServer(
		// Accept whatever the proxy forwards: the limits under test are
		// the proxy's, not this backend's.
		grpc.MaxHeaderListSize(64<<20),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			n := b.inflight.Add(1)
			defer b.inflight.Add(-1)
			b.total.Add(1)
			for p := b.peak.Load(); n > p && !b.peak.CompareAndSwap(p, n); p = b.peak.Load() {
			}
			if err := ss.SendHeader(metadata.Pairs("arrived", "1")); err != nil {
				return err
			}
			<-ss.Context().Done()
			return ss.Context().Err()
		}))
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return b
}

// limitsProxy starts a proxy with a grpc and an http listener, both with
// lim, routing holdService to hold and test.v1.Echo to echo.
func limitsProxy(t testing.TB, lim routes.ListenerLimits, hold, echo string) *proxy.Proxy {
	t.Helper()
	return startProxy(t, limitsSpec(lim, hold, echo))
}

// limitsSpec is limitsProxy's configuration.
func limitsSpec(lim routes.ListenerLimits, hold, echo string) *routes.Spec {
	return &routes.Spec{
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, Limits: lim, Relay: routes.ListenerRelayMessages},
			{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP, Limits: lim},
			{Name: "relay", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, Limits: lim, Relay: routes.ListenerRelayFrames},
		},
		Routes: []routes.Route{
			{Name: "hold-grpc", Listener: "grpc", Match: routes.Match{GRPCService: holdService}, Upstream: "hold"},
			{Name: "hold-http", Listener: "http", Match: routes.Match{GRPCService: holdService}, Upstream: "hold"},
			{Name: "hold-relay", Listener: "relay", Match: routes.Match{GRPCService: holdService}, Upstream: "hold"},
			{Name: "echo-grpc", Listener: "grpc", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "echo-http", Listener: "http", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "echo-relay", Listener: "relay", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
		},
		Upstreams: []routes.Upstream{
			{Name: "hold", Protocol: routes.UpstreamGRPC, Endpoints: []string{hold}},
			{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{echo}},
		},
	}
}

// listenerKinds are the listeners of limitsProxy: grpc-go's server (relay:
// messages), the HTTP listener, and the frame relay.
var listenerKinds = []string{"grpc", "http", "relay"}

// h2raw is an HTTP/2 client on a raw TCP connection that does what a
// hostile client does: it ignores the server's SETTINGS, resets streams at
// will and crafts its own HPACK. A reader goroutine answers SETTINGS and
// PING and counts what the server sends.
type h2raw struct {
	c   net.Conn
	bw  *bufio.Writer
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer

	wmu sync.Mutex // guards bw and fr's writing side

	done     chan struct{} // closed when the reader ends: the connection is gone
	rst      atomic.Int64  // RST_STREAM frames received
	headers  atomic.Int64  // response HEADERS received
	goaway   atomic.Bool
	mu       sync.Mutex // guards statuses
	statuses map[string]int
}

func dialRaw(t testing.TB, addr string) *h2raw {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &h2raw{c: c, bw: bufio.NewWriterSize(c, 64<<10), done: make(chan struct{}), statuses: map[string]int{}}
	h.fr = http2.NewFramer(h.bw, c)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.fr.MaxHeaderListSize = 1 << 20
	h.enc = hpack.NewEncoder(&h.hb)
	t.Cleanup(func() {
		c.Close()
		<-h.done
	})
	h.bw.WriteString(http2.ClientPreface)
	h.fr.WriteSettings()
	h.bw.Flush()
	go h.read()
	return h
}

func (h *h2raw) read() {
	defer close(h.done)
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				continue
			}
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.write(func() error { return h.fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				h.write(func() error { return h.fr.WritePing(true, f.Data) })
			}
		case *http2.RSTStreamFrame:
			h.rst.Add(1)
		case *http2.GoAwayFrame:
			h.goaway.Store(true)
		case *http2.MetaHeadersFrame:
			h.headers.Add(1)
			h.mu.Lock()
			h.statuses[f.PseudoValue("status")]++
			h.mu.Unlock()
		}
	}
}

// grpcRequestFields is the header list of a gRPC request for method, as a
// grpc-go client sends it, then extra: for tests that write frames
// themselves.
func grpcRequestFields(method, authority string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: method}, {Name: ":authority", Value: authority},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}, extra...)
}

// write runs one framer write and flushes it.
func (h *h2raw) write(w func() error) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if err := w(); err != nil {
		return err
	}
	return h.bw.Flush()
}

// open sends a HEADERS frame (with CONTINUATIONs when the block is larger
// than a frame) opening stream id for a gRPC call of method, with extra
// fields after the usual ones. The stream stays open. flush false leaves
// the frames in the buffer, for floods.
func (h *h2raw) open(id uint32, authority, method string, extra []hpack.HeaderField, flush bool) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	h.hb.Reset()
	for _, f := range grpcRequestFields(method, authority) {
		h.enc.WriteField(f)
	}
	for _, f := range extra {
		h.enc.WriteField(f)
	}
	block := h.hb.Bytes()
	const maxFrame = 16 << 10
	first := block[:min(len(block), maxFrame)]
	block = block[len(first):]
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(block) == 0}); err != nil {
		return err
	}
	for len(block) > 0 {
		n := min(len(block), maxFrame)
		if err := h.fr.WriteContinuation(id, n == len(block), block[:n]); err != nil {
			return err
		}
		block = block[n:]
	}
	if flush {
		return h.bw.Flush()
	}
	return nil
}

func (h *h2raw) status(s string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.statuses[s]
}

// closedWithin reports whether the server closed the connection within d.
func (h *h2raw) closedWithin(d time.Duration) bool {
	select {
	case <-h.done:
		return true
	case <-time.After(d):
		return false
	}
}

func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestHeaderListBomb: a client fills the HPACK dynamic table with one
// 4 KB binary metadata entry and then sends streams whose header blocks
// are one-byte references to it (RFC 7541 §7.3): 220 bytes on the wire
// decode to 880 KB of metadata per stream, under grpc-go's own 16 MiB and
// net/http's own 1 MiB default. With the default max_header_bytes (64 KiB)
// every such stream is refused while its block is decoded, so nothing of
// it is kept or forwarded, and the heap does not grow with the streams.
func TestHeaderListBomb(t *testing.T) {
	hold := startHold(t)
	echo := startEcho(t)
	p := limitsProxy(t, routes.ListenerLimits{}, hold.addr, echo.addr)
	bomb := hpack.HeaderField{Name: "x-bomb-bin", Value: base64.RawStdEncoding.EncodeToString(bytes.Repeat([]byte{0xa5}, 3000))}
	var fields []hpack.HeaderField
	for range 220 {
		fields = append(fields, bomb)
	}
	const streams = 40
	for _, kind := range listenerKinds {
		t.Run(kind+" listener", func(t *testing.T) {
			addr := p.Addr(kind).String()
			hold.total.Store(0)
			before := heapInUse()
			raw := dialRaw(t, addr)
			for i := range streams {
				if err := raw.open(uint32(2*i+1), addr, "/"+holdService+"/Call", fields, true); err != nil {
					t.Fatal(err)
				}
			}
			// Refused streams get RST_STREAM (grpc-go, the relay) or 431 (net/http);
			// forwarded ones would get the upstream's headers.
			answered := func() bool {
				return raw.status("431") >= streams || kind != "http" && raw.rst.Load() >= streams || raw.status("200") > 0
			}
			if !eventually(5*time.Second, answered) {
				t.Fatalf("only %d of %d streams answered", raw.rst.Load()+raw.headers.Load(), streams)
			}
			// Without a header limit, give the forwarded streams time to
			// reach the upstream, so their memory shows.
			if raw.status("200") > 0 {
				eventually(2*time.Second, func() bool { return raw.status("200") >= streams })
			}
			growth := int64(heapInUse()) - int64(before)
			t.Logf("heap growth with %d bomb streams open: %.1f MiB; upstream saw %d calls; answers: %d RST_STREAM, %d 431, %d 200",
				streams, float64(growth)/(1<<20), hold.total.Load(), raw.rst.Load(), raw.status("431"), raw.status("200"))
			if growth > 10<<20 {
				t.Errorf("heap grew by %.1f MiB under the header-list bomb, want < 10 MiB", float64(growth)/(1<<20))
			}
			if n := hold.total.Load(); n != 0 {
				t.Errorf("%d bomb streams were forwarded upstream, want none", n)
			}
			switch kind {
			case "grpc":
				if raw.rst.Load() != streams {
					t.Errorf("RST_STREAM for %d of %d streams, want all", raw.rst.Load(), streams)
				}
			case "http":
				if raw.status("431") != streams {
					t.Errorf("431 for %d of %d streams, want all", raw.status("431"), streams)
				}
			}
			raw.c.Close()
			if !eventually(5*time.Second, func() bool { return hold.inflight.Load() == 0 }) {
				t.Fatalf("%d calls still held upstream after the client left", hold.inflight.Load())
			}
		})
		t.Run(kind+" listener, grpc-go client gets a clear error", func(t *testing.T) {
			cc := dial(t, p.Addr(kind).String())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if o := unary(ctx, cc, "/"+echoService+"/Unary", nil, []byte("warm")); o.Code != codes.OK {
				t.Fatalf("warm-up call: %v", o)
			}
			md := metadata.Pairs("x-big-bin", string(bytes.Repeat([]byte{1}, 100<<10)))
			o := unary(ctx, cc, "/"+echoService+"/Unary", md, []byte("q"))
			if o.Code == codes.OK || !strings.Contains(o.Message, "header list size") {
				t.Fatalf("100 KiB of metadata: got %v %q, want an error naming the header list size", o.Code, o.Message)
			}
			t.Logf("100 KiB of metadata: %v %q", o.Code, o.Message)
			if o := unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("x-small-bin", "ok"), []byte("q")); o.Code != codes.OK {
				t.Fatalf("a normal call after it: %v", o)
			}
		})
	}
}

// TestContinuationFlood (CVE-2024-27316 class): a header block that never
// ends, sent as CONTINUATION frames without END_HEADERS. Once the block
// passes max_header_bytes the connection is closed, long before the 4 MiB
// the client tries to send, and nothing is forwarded.
func TestContinuationFlood(t *testing.T) {
	hold := startHold(t)
	echo := startEcho(t)
	p := limitsProxy(t, routes.ListenerLimits{}, hold.addr, echo.addr)
	// Never-indexed literals: every byte sent is a byte to decode.
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for block.Len() < 4<<20 {
		enc.WriteField(hpack.HeaderField{Name: "x-c", Value: strings.Repeat("c", 1000), Sensitive: true})
	}
	for _, kind := range listenerKinds {
		t.Run(kind+" listener", func(t *testing.T) {
			hold.total.Store(0)
			addr := p.Addr(kind).String()
			raw := dialRaw(t, addr)
			if err := raw.open(1, addr, "/"+holdService+"/Call", nil, true); err != nil {
				t.Fatal(err)
			}
			// The SETTINGS exchange is over once stream 1 is answered; from
			// then on nothing else is written until the block is abandoned
			// (another frame inside a header block is a protocol error,
			// RFC 9113 §6.10, which would close the connection for us).
			if !eventually(5*time.Second, func() bool { return raw.headers.Load() >= 1 }) {
				t.Fatalf("the normal stream was not answered")
			}
			// Stream 3: HEADERS without END_HEADERS, then CONTINUATIONs.
			sent := 0
			err := raw.write(func() error {
				const n = 16 << 10
				b := block.Bytes()
				if err := raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: b[:n]}); err != nil {
					return err
				}
				for b = b[n:]; len(b) >= n; b = b[n:] {
					if err := raw.fr.WriteContinuation(3, false, b[:n]); err != nil {
						return err
					}
					if err := raw.bw.Flush(); err != nil {
						return err
					}
					sent += n
				}
				return nil
			})
			closed := raw.closedWithin(5 * time.Second)
			t.Logf("write error: %v; GOAWAY: %v", err, raw.goaway.Load())
			t.Logf("CONTINUATION bytes written before the write failed or ended: %d KiB; connection closed: %v; upstream calls: %d",
				sent>>10, closed, hold.total.Load())
			if !closed {
				t.Fatalf("connection still open after %d KiB of one header block", sent>>10)
			}
			// Only the normal stream 1 may have been forwarded.
			if n := hold.total.Load(); n > 1 {
				t.Fatalf("%d calls forwarded, want at most the normal one", n)
			}
		})
	}
}

// TestStreamCap: a client that ignores SETTINGS_MAX_CONCURRENT_STREAMS
// opens 40 streams on one connection; at most max_concurrent_streams (8)
// of them reach the upstream, the rest are refused, and the proxy's
// goroutines stay bounded.
func TestStreamCap(t *testing.T) {
	const limit, streams = 8, 40
	hold := startHold(t)
	echo := startEcho(t)
	p := limitsProxy(t, routes.ListenerLimits{MaxConcurrentStreams: limit}, hold.addr, echo.addr)
	for _, kind := range listenerKinds {
		t.Run(kind+" listener", func(t *testing.T) {
			hold.peak.Store(0)
			addr := p.Addr(kind).String()
			base := runtime.NumGoroutine()
			raw := dialRaw(t, addr)
			for i := range streams {
				if err := raw.open(uint32(2*i+1), addr, "/"+holdService+"/Call", nil, true); err != nil {
					t.Fatal(err)
				}
			}
			// Every stream is answered: held ones with the upstream's
			// headers, the others refused.
			if !eventually(5*time.Second, func() bool { return raw.rst.Load()+raw.headers.Load() >= streams }) {
				t.Fatalf("answers: %d RST_STREAM, %d HEADERS of %d streams", raw.rst.Load(), raw.headers.Load(), streams)
			}
			grown := runtime.NumGoroutine() - base
			t.Logf("%d streams opened: %d reached the upstream at once, %d refused; goroutines +%d",
				streams, hold.peak.Load(), raw.rst.Load(), grown)
			if got := hold.peak.Load(); got > limit || got == 0 {
				t.Errorf("upstream saw %d calls at once, want 1..%d", got, limit)
			}
			if raw.rst.Load() < streams-limit {
				t.Errorf("%d streams refused, want at least %d", raw.rst.Load(), streams-limit)
			}
			// A held call costs a few goroutines (server stream, upstream
			// stream, pumps); 40 would cost far more.
			if grown > limit*8+20 {
				t.Errorf("goroutines grew by %d for %d held streams", grown, limit)
			}
			raw.c.Close()
			if !eventually(5*time.Second, func() bool { return hold.inflight.Load() == 0 }) {
				t.Fatalf("%d calls still held upstream after the client left", hold.inflight.Load())
			}
		})
	}
}

// TestConnectionCap: beyond max_connections a new connection is closed at
// once and counted; once one closes, a new one is served.
func TestConnectionCap(t *testing.T) {
	const limit = 2
	echo := startEcho(t)
	hold := startHold(t)
	p := limitsProxy(t, routes.ListenerLimits{MaxConnections: limit}, hold.addr, echo.addr)
	for _, kind := range listenerKinds {
		t.Run(kind+" listener", func(t *testing.T) {
			addr := p.Addr(kind).String()
			var conns []net.Conn
			for range limit {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				conns = append(conns, c)
			}
			if !eventually(5*time.Second, func() bool { return p.ListenerStats()[kind].Open == limit }) {
				t.Fatalf("stats %+v, want %d open", p.ListenerStats()[kind], limit)
			}
			extra, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer extra.Close()
			extra.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := extra.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
				t.Fatalf("connection over the cap: read %v, want it closed by the proxy", err)
			}
			st := p.ListenerStats()[kind]
			t.Logf("stats with %d held and one refused: %+v", limit, st)
			if st.Refused != 1 || st.Open != limit {
				t.Fatalf("stats %+v, want %d open and 1 refused", st, limit)
			}
			conns[0].Close()
			if !eventually(5*time.Second, func() bool { return p.ListenerStats()[kind].Open == limit-1 }) {
				t.Fatalf("stats %+v after a close, want %d open", p.ListenerStats()[kind], limit-1)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if o := unary(ctx, dial(t, addr), "/"+echoService+"/Unary", nil, []byte("q")); o.Code != codes.OK {
				t.Fatalf("a call once below the cap: %v", o)
			}
		})
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// TestIdleAndSlowClients: connections that hold a socket without doing
// anything are closed after idle_timeout (no calls) or read_header_timeout
// (handshake or headers not finished: slowloris).
func TestIdleAndSlowClients(t *testing.T) {
	echo := startEcho(t)
	hold := startHold(t)
	p := limitsProxy(t, routes.ListenerLimits{IdleTimeout: 300 * time.Millisecond, ReadHeaderTimeout: 300 * time.Millisecond}, hold.addr, echo.addr)
	cases := []struct {
		name  string
		kinds []string
		start func(t *testing.T, addr string) (done <-chan struct{})
	}{
		{"idle HTTP/2 connection after a call", listenerKinds, func(t *testing.T, addr string) <-chan struct{} {
			raw := dialRaw(t, addr)
			// One call that ends at once (no route): the connection then
			// has no streams.
			if err := raw.open(1, addr, "/nowhere.v1.X/Y", nil, false); err != nil {
				t.Fatal(err)
			}
			raw.write(func() error { return raw.fr.WriteData(1, true, []byte{0, 0, 0, 0, 0}) })
			return raw.done
		}},
		{"handshake never finished", listenerKinds, func(t *testing.T, addr string) <-chan struct{} {
			return silentConn(t, addr, "PRI * HTTP/2.0\r\n")
		}},
		{"HTTP/1 headers never finished", []string{"http"}, func(t *testing.T, addr string) <-chan struct{} {
			return silentConn(t, addr, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
		}},
	}
	for _, tc := range cases {
		for _, kind := range tc.kinds {
			t.Run(kind+" listener, "+tc.name, func(t *testing.T) {
				start := time.Now()
				done := tc.start(t, p.Addr(kind).String())
				select {
				case <-done:
					t.Logf("closed after %v", time.Since(start).Round(time.Millisecond))
				case <-time.After(5 * time.Second):
					t.Fatalf("connection still open after 5s; limits are 300ms")
				}
			})
		}
	}
}

// silentConn writes prefix and then nothing; done is closed when the
// server closes the connection.
func silentConn(t *testing.T, addr, prefix string) <-chan struct{} {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	if _, err := io.WriteString(c, prefix); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		io.Copy(io.Discard, c)
	}()
	return done
}

// TestRapidReset (CVE-2023-44487): one client sends 20,000 HEADERS +
// RST_STREAM pairs on one connection while another keeps calling. The
// flooding connection is closed, few of its streams reach the upstream,
// the other client never fails, and the goroutines return to baseline.
func TestRapidReset(t *testing.T) {
	hold := startHold(t)
	echo := startEcho(t)
	p := limitsProxy(t, routes.ListenerLimits{}, hold.addr, echo.addr)
	const pairs = 20000
	type floodCase struct {
		name, kind string
		procs      int // GOMAXPROCS for the case (0: as is)
	}
	var cases []floodCase
	for _, kind := range listenerKinds {
		cases = append(cases, floodCase{kind + " listener", kind, 0})
	}
	// On one CPU the relay's reader outruns the streams' handlers, so
	// the flood meets the stream limit rather than finished streams: its
	// refusals must count too.
	cases = append(cases, floodCase{"relay listener, handlers behind the flood (GOMAXPROCS 1)", "relay", 1})
	for _, tc := range cases {
		kind := tc.kind
		t.Run(tc.name, func(t *testing.T) {
			if tc.procs > 0 {
				defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(tc.procs))
			}
			addr := p.Addr(kind).String()
			hold.total.Store(0)
			cc := dial(t, addr)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if o := unary(ctx, cc, "/"+echoService+"/Unary", nil, []byte("warm")); o.Code != codes.OK {
				t.Fatalf("warm-up call: %v", o)
			}
			// Connect the hold upstream too, so that its connection is
			// part of the baseline.
			wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
			unary(wctx, cc, "/"+holdService+"/Call", nil, nil)
			wcancel()
			if !eventually(5*time.Second, func() bool { return hold.inflight.Load() == 0 }) {
				t.Fatalf("warm-up call still held upstream")
			}
			base := runtime.NumGoroutine()
			before := p.ListenerStats()[kind]

			stop := make(chan struct{})
			var ok, failed atomic.Int64
			var firstErr atomic.Value
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if o := unary(ctx, cc, "/"+echoService+"/Unary", nil, []byte("q")); o.Code == codes.OK {
						ok.Add(1)
					} else {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, o.String())
					}
				}
			}()

			raw := dialRaw(t, addr)
			sent := 0
			for i := range pairs {
				id := uint32(2*i + 1)
				if err := raw.open(id, addr, "/"+holdService+"/Call", nil, false); err != nil {
					break
				}
				raw.wmu.Lock()
				err := raw.fr.WriteRSTStream(id, http2.ErrCodeCancel)
				if err == nil && i%64 == 63 {
					err = raw.bw.Flush()
				}
				raw.wmu.Unlock()
				if err != nil {
					break
				}
				sent++
			}
			raw.write(func() error { return nil })
			closed := raw.closedWithin(10 * time.Second)
			close(stop)
			wg.Wait()
			after := p.ListenerStats()[kind]
			t.Logf("flood: %d pairs written, connection closed: %v (GOAWAY %v), %d calls reached the upstream; other client: %d ok, %d failed; reset floods counted: %d",
				sent, closed, raw.goaway.Load(), hold.total.Load()-1, ok.Load(), failed.Load(), after.ResetFloods-before.ResetFloods)
			switch forwarded := hold.total.Load() - 1; {
			case closed:
			case kind == "http" && forwarded < 2500:
				// net/http runs at most max_concurrent_streams handlers
				// and queues the other streams; one reset while queued is
				// dropped without a handler, unseen by the guard (which
				// closes after 2,500 premature resets it sees). On a
				// loaded machine most of the flood goes that way: it
				// costs no handler and reaches no upstream, so the
				// connection may stay open. CI saw 1,231 forwarded.
				t.Logf("open after the flood, but net/http dropped the reset streams before their handlers: %d forwarded", forwarded)
			default:
				t.Errorf("the flooding connection is still open")
			}
			if failed.Load() > 0 {
				t.Errorf("the other client failed %d times during the flood, first: %v", failed.Load(), firstErr.Load())
			}
			if ok.Load() == 0 {
				t.Errorf("the other client made no call during the flood")
			}
			if n := hold.total.Load() - 1; n > 6000 {
				t.Errorf("%d of %d reset streams were forwarded upstream", n, pairs)
			}
			if kind != "http" && after.ResetFloods-before.ResetFloods != 1 {
				t.Errorf("reset floods counted: %d, want 1", after.ResetFloods-before.ResetFloods)
			}
			var now int
			if !eventually(10*time.Second, func() bool { now = runtime.NumGoroutine(); return now <= base+5 }) {
				t.Errorf("goroutines: %d after the flood, %d before", now, base)
			}
			t.Logf("goroutines: %d before, %d after", base, now)
		})
	}
}

// TestGRPCMessageLimitOnHTTPListener: max_message_bytes holds for gRPC
// calls on the http listener and on the frame relay as it does on the grpc
// listener.
func TestGRPCMessageLimitOnHTTPListener(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, &routes.Spec{
		Listeners: []routes.Listener{
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, MaxMessageBytes: 1 << 20, Relay: routes.ListenerRelayMessages},
			{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP, MaxMessageBytes: 1 << 20},
			{Name: "relay", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, MaxMessageBytes: 1 << 20, Relay: routes.ListenerRelayFrames},
		},
		Routes: []routes.Route{
			{Name: "echo-grpc", Listener: "grpc", Upstream: "echo"},
			{Name: "echo-http", Listener: "http", Upstream: "echo"},
			{Name: "echo-relay", Listener: "relay", Upstream: "echo"},
		},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{echo.addr}}},
	})
	cases := []struct {
		name     string
		call     func(ctx context.Context, cc *grpc.ClientConn) observed
		wantCode codes.Code
	}{
		{"unary within the limit", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return unary(ctx, cc, "/"+echoService+"/Unary", nil, bigPayload(1<<20-16))
		}, codes.OK},
		{"unary over the limit", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return unary(ctx, cc, "/"+echoService+"/Unary", nil, bigPayload(2<<20))
		}, codes.ResourceExhausted},
		{"client stream, third message over the limit", func(ctx context.Context, cc *grpc.ClientConn) observed {
			return stream(ctx, cc, "/"+echoService+"/ClientStream", nil, [][]byte{[]byte("a"), bigPayload(512 << 10), bigPayload(3 << 20)})
		}, codes.ResourceExhausted},
	}
	for _, tc := range cases {
		for _, kind := range listenerKinds {
			t.Run(kind+" listener, "+tc.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				o := tc.call(ctx, dial(t, p.Addr(kind).String()))
				if o.Code != tc.wantCode {
					t.Fatalf("got %v %q (%d messages), want %v", o.Code, o.Message, len(o.Msgs), tc.wantCode)
				}
				if tc.wantCode == codes.ResourceExhausted && !strings.Contains(o.Message, "larger than max") {
					t.Fatalf("message %q does not say what was too large", o.Message)
				}
				t.Logf("%v %q", o.Code, o.Message)
			})
		}
	}
}

// connEnds counts the connections a gRPC server saw end.
type connEnds struct{ n atomic.Int64 }

func (c *connEnds) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (c *connEnds) HandleRPC(context.Context, stats.RPCStats)                         {}
func (c *connEnds) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (c *connEnds) HandleConn(_ context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnEnd); ok {
		c.n.Add(1)
	}
}

// TestUpstreamLimits: the proxy's client side bounds what an upstream's
// answer may hold (response headers) and closes idle pooled connections.
func TestUpstreamLimits(t *testing.T) {
	big := strings.Repeat("v", 32<<10)
	lim := routes.UpstreamLimits{MaxHeaderBytes: 16 << 10, IdleTimeout: 200 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	for _, kind := range []string{"grpc", "relay"} {
		t.Run("grpc upstream: response headers over max_header_bytes, "+kind+" listener", func(t *testing.T) {
			echo := startEcho(t)
			p := startProxy(t, &routes.Spec{
				Listeners: []routes.Listener{inListener("grpc", kind)},
				Routes:    []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo"}},
				Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{echo.addr}, Limits: lim}},
			})
			cc := dial(t, p.Addr("grpc").String())
			if o := unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("h-small", "ok"), []byte("q")); o.Code != codes.OK {
				t.Fatalf("small response header: %v %q", o.Code, o.Message)
			}
			// The echo backend sends h-* request metadata back as headers.
			o := unary(ctx, cc, "/"+echoService+"/Unary", metadata.Pairs("h-big", big), []byte("q"))
			if o.Code == codes.OK {
				t.Fatalf("32 KiB response header with a 16 KiB limit: OK, want an error")
			}
			t.Logf("32 KiB response header: %v %q", o.Code, o.Message)
		})
	}

	t.Run("http upstream: response headers over max_header_bytes", func(t *testing.T) {
		for _, proto := range []string{protoHTTP1, protoH2C} {
			up := startHTTPUpstream(t, proto, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/big" {
					w.Header().Set("X-Big", big)
				}
				io.WriteString(w, "ok")
			}), nil)
			spec := singleRouteSpec(upstreamProtocol(proto), hostPort(up))
			spec.Upstreams[0].Limits = lim
			p := startProxy(t, spec)
			c := newHTTPClient(t, protoHTTP1)
			for path, want := range map[string]int{"/small": http.StatusOK, "/big": http.StatusBadGateway} {
				resp, err := c.Get(proxyURL(p, "http") + path)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Errorf("%s upstream, %s: status %d, want %d", proto, path, resp.StatusCode, want)
				}
			}
		}
	})

	t.Run("http upstream: idle connection closed after idle_timeout", func(t *testing.T) {
		var closed atomic.Int64
		up := startHTTPUpstream(t, protoHTTP1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
			func(s *http.Server) {
				s.ConnState = func(_ net.Conn, st http.ConnState) {
					if st == http.StateClosed {
						closed.Add(1)
					}
				}
			})
		spec := singleRouteSpec(routes.UpstreamHTTP, hostPort(up))
		spec.Upstreams[0].Limits = lim
		p := startProxy(t, spec)
		resp, err := newHTTPClient(t, protoHTTP1).Get(proxyURL(p, "http") + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if !eventually(5*time.Second, func() bool { return closed.Load() > 0 }) {
			t.Fatalf("the pooled upstream connection is still open 5s after its call; idle_timeout is 200ms")
		}
	})

	for _, kind := range []string{"grpc", "relay"} {
		t.Run("grpc upstream: idle connection closed after idle_timeout, "+kind+" listener", func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ends := new(connEnds)
			srv := grpc.NewServer(grpc.StatsHandler(ends), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
				return ss.SendMsg(wrapperspb.Bytes(nil))
			}))
			go srv.Serve(ln)
			defer srv.Stop()
			p := startProxy(t, &routes.Spec{
				Listeners: []routes.Listener{inListener("grpc", kind)},
				Routes:    []routes.Route{{Name: "all", Listener: "grpc", Upstream: "up"}},
				Upstreams: []routes.Upstream{{Name: "up", Protocol: routes.UpstreamGRPC, Endpoints: []string{ln.Addr().String()}, Limits: lim}},
			})
			if o := unary(ctx, dial(t, p.Addr("grpc").String()), "/any.v1.S/M", nil, nil); o.Code != codes.OK {
				t.Fatalf("call: %v %q", o.Code, o.Message)
			}
			if !eventually(5*time.Second, func() bool { return ends.n.Load() > 0 }) {
				t.Fatalf("the upstream connection is still open 5s after its call; idle_timeout is 200ms")
			}
		})
	}
}

// TestListenerLimitsReload: a reload that changes a listener's limits
// rebuilds it with the new ones, on the same address, and its counters
// carry on.
func TestListenerLimitsReload(t *testing.T) {
	spec := func(addr string, maxConns int) *routes.Spec {
		return &routes.Spec{Listeners: []routes.Listener{{Name: "grpc", Address: addr, Protocol: routes.ListenerGRPC,
			Limits: routes.ListenerLimits{MaxConnections: maxConns}}}}
	}
	addr := testkit.FreeAddr(t)
	p := startProxy(t, spec(addr, 1))
	hold := func(n int) (refusedAt int) {
		t.Helper()
		refusedAt = -1
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for i := range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			if _, err := c.Read(make([]byte, 64<<10)); errors.Is(err, io.EOF) || isReset(err) {
				return i
			}
		}
		return refusedAt
	}
	if got := hold(2); got != 1 {
		t.Fatalf("max_connections 1: connection %d refused, want the second (1)", got)
	}
	if st := p.ListenerStats()["grpc"]; st.Refused != 1 {
		t.Fatalf("stats before the reload: %+v, want 1 refused", st)
	}
	// Only the limits change: the listener is rebuilt with them, on the
	// same address (the old socket is released first).
	if err := p.Apply(spec(addr, 3)); err != nil {
		t.Fatal(err)
	}
	if got := hold(3); got != -1 {
		t.Fatalf("after a reload to max_connections 3: connection %d refused, want none", got)
	}
	if st := p.ListenerStats()["grpc"]; st.Refused != 1 {
		t.Fatalf("stats after the reload: %+v, want the refusal before it still counted", st)
	}
}

// TestListenerMetrics: the connection counters reach /metrics under the
// listener's name.
func TestListenerMetrics(t *testing.T) {
	echo := startEcho(t)
	env := startResEnv(t, &routes.Spec{
		Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC,
			Limits: routes.ListenerLimits{MaxConnections: 1}}},
		Routes:    []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo"}},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{echo.addr}}},
	})
	held, err := net.Dial("tcp", env.grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	testkit.WaitFor(t, "one open connection", func() bool {
		return env.metric(t, "hopwatch_listener_connections", map[string]string{"listener": "grpc"}) == 1
	})
	extra, err := net.Dial("tcp", env.grpcAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	testkit.WaitFor(t, "the refusal counted", func() bool {
		return env.metric(t, "hopwatch_listener_connections_refused_total", map[string]string{"listener": "grpc"}) == 1
	})
	if n := env.metric(t, "hopwatch_listener_reset_floods_total", map[string]string{"listener": "grpc"}); n != 0 {
		t.Errorf("reset floods = %v", n)
	}
}

// TestPeerThatDoesNotRead floods each listener with frames the server must
// answer (PING acks, SETTINGS acks, RST_STREAMs for malformed streams)
// from a client that never reads. A server that queues every answer grows
// without limit (the relay did, for the RST_STREAMs); a bounded one either
// closes the connection or stops reading (the client's writes then stall),
// well before the flood is all sent. Then the proxy still serves others.
func TestPeerThatDoesNotRead(t *testing.T) {
	hold := startHold(t)
	echo := startEcho(t)
	p := limitsProxy(t, routes.ListenerLimits{}, hold.addr, echo.addr)
	// Enough frames that a server that stops reading cannot take them all
	// into TCP's buffers (the answers fill the proxy's send buffer, which
	// autotunes up to 4 MiB, ~250,000 answers; then the flood fills its
	// receive buffer), while a queue without a bound takes millions.
	const frames = 4_000_000
	floods := []struct {
		name  string
		frame func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, i int) error
	}{
		{"PING", func(fr *http2.Framer, _ *hpack.Encoder, _ *bytes.Buffer, i int) error {
			return fr.WritePing(false, [8]byte{byte(i)})
		}},
		{"SETTINGS", func(fr *http2.Framer, _ *hpack.Encoder, _ *bytes.Buffer, _ int) error {
			return fr.WriteSettings()
		}},
		{"malformed streams", func(fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, i int) error {
			// A connection-specific field makes the request malformed
			// (RFC 9113 §8.2.2): each stream is answered with RST_STREAM.
			hb.Reset()
			for _, f := range grpcRequestFields("/"+echoService+"/Unary", "x", hpack.HeaderField{Name: "connection", Value: "close"}) {
				enc.WriteField(f)
			}
			return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true})
		}},
	}
	for _, kind := range listenerKinds {
		for _, fl := range floods {
			if kind != "relay" && fl.name != "PING" {
				// grpc-go's and x/net's servers bound their answers
				// themselves (grpc-go stops reading at 50 queued, x/net
				// closes at 10,000); one flood shows that still holds,
				// and the others take seconds each under -race. The
				// relay's queue is ours: every kind of answer is tested.
				continue
			}
			t.Run(kind+" listener, "+fl.name, func(t *testing.T) {
				// Each flood takes seconds of the server's CPU under
				// -race until TCP's buffers are full; side by side they
				// take the time of the longest.
				t.Parallel()
				addr := p.Addr(kind).String()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				// It never reads, and keeps its own buffers small.
				c.(*net.TCPConn).SetReadBuffer(4 << 10)
				c.(*net.TCPConn).SetWriteBuffer(4 << 10)
				bw := bufio.NewWriterSize(c, 32<<10)
				fr := http2.NewFramer(bw, nil)
				var hb bytes.Buffer
				enc := hpack.NewEncoder(&hb)
				bw.WriteString(http2.ClientPreface)
				fr.WriteSettings()
				sent := 0
				var werr error
				for ; sent < frames && werr == nil; sent++ {
					if werr = fl.frame(fr, enc, &hb, sent); werr == nil && sent%256 == 255 {
						// A server that stops reading stalls the flood: a
						// write that cannot finish in 2 s counts as that.
						c.SetWriteDeadline(time.Now().Add(2 * time.Second))
						werr = bw.Flush()
					}
				}
				if werr == nil {
					c.SetWriteDeadline(time.Now().Add(2 * time.Second))
					werr = bw.Flush()
				}
				if werr == nil {
					t.Fatalf("the server took all %d frames from a client that reads none of its answers: its queue of answers has no bound", frames)
				}
				t.Logf("flood stopped after %d frames: %v", sent, werr)

				cc := dial(t, addr)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if o := unary(ctx, cc, "/"+echoService+"/Unary", nil, []byte("after")); o.Code != codes.OK {
					t.Fatalf("another client after the flood: %v", o)
				}
			})
		}
	}
}
