package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/routes"
)

// rawEvent is one frame a raw HTTP/2 client read.
type rawEvent struct {
	kind   string // "data", "headers", "rst", "ping", "goaway"
	id     uint32
	end    bool
	data   []byte
	code   http2.ErrCode
	fields []hpack.HeaderField
}

// rawClient is an HTTP/2 client that writes frames as a test tells it,
// ignoring the relay's windows, and reports what it reads (giving back
// the windows of what it read at once).
type rawClient struct {
	c   net.Conn
	bw  *bufio.Writer
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
	mu  sync.Mutex // writes
	ev  chan rawEvent
}

func dialRawClient(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	r := &rawClient{c: c, bw: bufio.NewWriterSize(c, 64<<10), ev: make(chan rawEvent, 4096)}
	r.fr = http2.NewFramer(r.bw, c)
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.enc = hpack.NewEncoder(&r.hb)
	done := make(chan struct{})
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	r.bw.WriteString(http2.ClientPreface)
	r.fr.WriteSettings()
	r.bw.Flush()
	go func() {
		defer close(done)
		defer close(r.ev)
		for {
			f, err := r.fr.ReadFrame()
			if err != nil {
				var se http2.StreamError
				if errors.As(err, &se) {
					continue
				}
				return
			}
			var e rawEvent
			switch f := f.(type) {
			case *http2.DataFrame:
				e = rawEvent{kind: "data", id: f.StreamID, end: f.StreamEnded(), data: bytes.Clone(f.Data())}
				if n := uint32(f.Length); n > 0 {
					// Take the bytes: give the windows back.
					r.write(func() error {
						if err := r.fr.WriteWindowUpdate(0, n); err != nil {
							return err
						}
						return r.fr.WriteWindowUpdate(f.StreamID, n)
					})
				}
			case *http2.MetaHeadersFrame:
				e = rawEvent{kind: "headers", id: f.StreamID, end: f.StreamEnded(), fields: f.Fields}
			case *http2.RSTStreamFrame:
				e = rawEvent{kind: "rst", id: f.StreamID, code: f.ErrCode}
			case *http2.PingFrame:
				if !f.IsAck() {
					continue
				}
				e = rawEvent{kind: "ping"}
			case *http2.GoAwayFrame:
				e = rawEvent{kind: "goaway", code: f.ErrCode}
			case *http2.SettingsFrame:
				if !f.IsAck() {
					r.write(func() error { return r.fr.WriteSettingsAck() })
				}
				continue
			default:
				continue
			}
			select {
			case r.ev <- e:
			default: // the test stopped looking
			}
		}
	}()
	return r
}

func (r *rawClient) write(w func() error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := w(); err != nil {
		return err
	}
	return r.bw.Flush()
}

// open starts a gRPC call of method on stream id.
func (r *rawClient) open(id uint32, method string) error {
	return r.write(func() error {
		r.hb.Reset()
		for _, f := range grpcRequestFields(method, "proxy") {
			r.enc.WriteField(f)
		}
		return r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.hb.Bytes(), EndHeaders: true})
	})
}

// grpcMessage is v as one length-prefixed gRPC message.
func grpcMessage(t *testing.T, v []byte) []byte {
	t.Helper()
	m, err := proto.Marshal(wrapperspb.Bytes(v))
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 5, 5+len(m))
	binary.BigEndian.PutUint32(out[1:], uint32(len(m)))
	return append(out, m...)
}

// TestRelayDataFrames: the DATA bookkeeping of the frame relay (one
// method, h2conn.data, for client and upstream connections): padding is
// given back to the sender at once and never forwarded (RFC 9113 §6.1: it
// counts against flow control), so a client padding its frames is not
// stalled by its own padding; a client that overruns a stream's window is
// answered RST_STREAM FLOW_CONTROL_ERROR on that stream only (§6.9.1), and
// its connection goes on serving calls.
func TestRelayDataFrames(t *testing.T) {
	echo := startEcho(t)
	deaf := startDeaf(t)
	p := startProxy(t, &routes.Spec{
		Listeners: []routes.Listener{inListener("in", "relay")},
		Routes: []routes.Route{
			{Name: "echo", Listener: "in", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"},
			{Name: "deaf", Listener: "in", Upstream: "deaf"},
		},
		Upstreams: []routes.Upstream{
			{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{echo.addr}},
			{Name: "deaf", Protocol: routes.UpstreamGRPC, Endpoints: []string{deaf}},
		},
	})
	addr := p.Addr("in").String()
	unary := "/" + echoService + "/Unary"
	// The relay's stream window (INITIAL_WINDOW_SIZE) is 256 KiB.
	const window = 256 << 10

	// echoed sends msg on stream id in frames of at most frame bytes,
	// each padded with pad bytes, and requires the echo back, OK.
	echoed := func(t *testing.T, r *rawClient, id uint32, msg []byte, frame, pad int) {
		t.Helper()
		if err := r.open(id, unary); err != nil {
			t.Fatal(err)
		}
		padding := make([]byte, pad)
		for b := msg; len(b) > 0; {
			n := min(len(b), frame)
			end := n == len(b)
			part := b[:n]
			if err := r.write(func() error { return r.fr.WriteDataPadded(id, end, part, padding) }); err != nil {
				t.Fatal(err)
			}
			b = b[n:]
		}
		var got []byte
		deadline := time.After(10 * time.Second)
		for {
			select {
			case e, ok := <-r.ev:
				if !ok {
					t.Fatal("connection closed")
				}
				if e.id != id {
					continue
				}
				switch e.kind {
				case "rst":
					t.Fatalf("stream %d reset: %v", id, e.code)
				case "data":
					got = append(got, e.data...)
				case "headers":
					if !e.end {
						continue
					}
					for _, f := range e.fields {
						if f.Name == "grpc-status" && f.Value != "0" {
							t.Fatalf("grpc-status %s: %+v", f.Value, e.fields)
						}
					}
					if !bytes.Equal(got, msg) {
						t.Fatalf("echoed %d bytes, want the %d sent", len(got), len(msg))
					}
					return
				}
			case <-deadline:
				t.Fatalf("stream %d: no answer in 10s (%d bytes echoed)", id, len(got))
			}
		}
	}

	tests := []struct {
		name string
		run  func(t *testing.T, r *rawClient)
	}{
		{name: "padding is given back", run: func(t *testing.T, r *rawClient) {
			// 1-byte frames with 255 bytes of padding: far more padding
			// than the stream's window, sent without waiting for it.
			msg := grpcMessage(t, bytes.Repeat([]byte("p"), 1200))
			if len(msg)*256 <= window {
				t.Fatalf("%d bytes with padding do not exceed the window", len(msg)*256)
			}
			echoed(t, r, 1, msg, 1, 255)
		}},
		{name: "frames of all sizes arrive whole", run: func(t *testing.T, r *rawClient) {
			// Payloads of every buffer size class and across them, some
			// padded; each call's bytes come back unchanged.
			id := uint32(1)
			for _, size := range []int{1, 63, 64, 65, 1000, 4096, 16384 - 5, 16384, 100 << 10} {
				v := make([]byte, size)
				for i := range v {
					v[i] = byte(i*7 + size)
				}
				// Padded frames keep within the 16 KiB frame size.
				echoed(t, r, id, grpcMessage(t, v), 16384-8, size%3)
				id += 2
			}
		}},
		{name: "window overrun resets the stream only", run: func(t *testing.T, r *rawClient) {
			// The deaf upstream takes 64 KiB and reads no more: the relay
			// holds one window of the client's bytes and gives nothing
			// more back, so 400 KiB sent at once overrun it.
			if err := r.open(1, "/deaf.v1.S/Call"); err != nil {
				t.Fatal(err)
			}
			msg := grpcMessage(t, make([]byte, 400<<10))
			chunk := make([]byte, 16384)
			for sent := 0; sent < len(msg); sent += len(chunk) {
				n := copy(chunk, msg[sent:])
				if err := r.write(func() error { return r.fr.WriteData(1, false, chunk[:n]) }); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.After(10 * time.Second)
		wait:
			for {
				select {
				case e, ok := <-r.ev:
					if !ok {
						t.Fatal("connection closed")
					}
					if e.kind == "goaway" {
						t.Fatalf("GOAWAY %v: the connection, not the stream, ended", e.code)
					}
					if e.kind == "rst" && e.id == 1 {
						if e.code != http2.ErrCodeFlowControl {
							t.Fatalf("stream 1 reset with %v, want FLOW_CONTROL_ERROR", e.code)
						}
						break wait
					}
				case <-deadline:
					t.Fatal("no RST_STREAM for the overrun in 10s")
				}
			}
			// The connection goes on.
			echoed(t, r, 3, grpcMessage(t, []byte("after")), 16384, 0)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, dialRawClient(t, addr))
		})
	}
}

// TestRelayOwnStatusNotLostToCleanup: a call the relay ends itself while
// its handler is already done with it (a request message over
// max_message_bytes, seen by the connection's reader as the handler
// returns) gets the relay's status in trailers before its stream is reset:
// the handler's cleanup must not reset and forget the stream between the
// decision and the trailers, which left the client with a bare
// RST_STREAM(CANCEL).
func TestRelayOwnStatusNotLostToCleanup(t *testing.T) {
	echo := startEcho(t)
	p := startProxy(t, &routes.Spec{
		Listeners: []routes.Listener{{Name: "relay", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, MaxMessageBytes: 64 << 10}},
		Routes:    []routes.Route{{Name: "echo", Listener: "relay", Upstream: "echo"}},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{echo.addr}}},
	})
	cc := dial(t, p.Addr("relay").String())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const calls, parallel = 400, 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	wrong := map[string]int{}
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < calls/parallel; i++ {
				o := unary(ctx, cc, "/"+echoService+"/Unary", nil, bigPayload(128<<10))
				if o.Code != codes.ResourceExhausted {
					mu.Lock()
					wrong[o.Code.String()+": "+o.Message]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(wrong) > 0 {
		t.Fatalf("of %d calls over the limit, not ResourceExhausted: %v", calls, wrong)
	}
}
