package proxy_test

import (
	"bufio"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/hopwatch/hopwatch/routes"
)

// flood is what a raw client saw while it sent frames to a relay listener.
type flood struct {
	sent     int                // frames of the flood written before the connection ended
	goAway   *http2.GoAwayFrame // the server's GOAWAY, if any
	goAwayDD string
	pingAck  bool // the PING sent after the frames was answered: the connection lived
}

// sendFlood opens a raw HTTP/2 connection to addr, optionally opens a
// held call on stream 1, writes n frames made by frame, then a PING, and
// reads until the PING's ack or the end of the connection.
func sendFlood(t *testing.T, addr string, openCall bool, n int, frame func(fr *http2.Framer) error) flood {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	bw := bufio.NewWriterSize(nc, 64<<10)
	fr := http2.NewFramer(bw, nc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var out flood
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			mu.Lock()
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				out.goAway = f
				out.goAwayDD = string(f.DebugData())
			case *http2.PingFrame:
				if f.IsAck() && f.Data == [8]byte{'f', 'l', 'o', 'o', 'd'} {
					out.pingAck = true
					mu.Unlock()
					return
				}
			}
			mu.Unlock()
		}
	}()
	bw.WriteString(http2.ClientPreface)
	fr.WriteSettings()
	if openCall {
		var hb bytesBuffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range grpcRequestFields("/"+holdService+"/Hold", "relay") {
			enc.WriteField(f)
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.b, EndHeaders: true})
	}
	sent := 0
	for ; sent < n; sent++ {
		if err := frame(fr); err != nil {
			break
		}
		if sent%64 == 63 && bw.Flush() != nil {
			break
		}
	}
	fr.WritePing(false, [8]byte{'f', 'l', 'o', 'o', 'd'})
	bw.Flush()
	<-done
	mu.Lock()
	defer mu.Unlock()
	out.sent = sent
	return out
}

type bytesBuffer struct{ b []byte }

func (w *bytesBuffer) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }

// TestFrameFloods: a client that sends frames which do no work (PRIORITY,
// SETTINGS, WINDOW_UPDATE, unknown types, empty DATA) out of proportion to
// its streams and the data it receives is told GOAWAY ENHANCE_YOUR_CALM
// "frame_flood" and closed, and counted; before, the relay read 1,000,000
// of each for as long as the client liked (CPU, not memory: its answers
// were already bounded). A client within the ratios keeps its connection,
// and other clients are served throughout.
func TestFrameFloods(t *testing.T) {
	hold := startHold(t)
	echo := startEcho(t)
	p := limitsProxy(t, routes.ListenerLimits{}, hold.addr, echo.addr)
	addr := p.Addr("relay").String()
	const many = 1_000_000
	cases := []struct {
		name     string
		openCall bool
		n        int
		frame    func(fr *http2.Framer) error
		flood    bool
	}{
		{"PRIORITY", false, many, func(fr *http2.Framer) error {
			return fr.WritePriority(3, http2.PriorityParam{Weight: 15})
		}, true},
		{"SETTINGS", false, many, func(fr *http2.Framer) error { return fr.WriteSettings() }, true},
		{"WINDOW_UPDATE", false, many, func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 1) }, true},
		{"unknown frame type", false, many, func(fr *http2.Framer) error { return fr.WriteRawFrame(0xfa, 0, 0, nil) }, true},
		{"empty DATA", true, many, func(fr *http2.Framer) error { return fr.WriteData(1, false, nil) }, true},
		{"padding-only DATA", true, many, func(fr *http2.Framer) error {
			return fr.WriteDataPadded(1, false, nil, make([]byte, 8))
		}, true},
		// Within the ratios: a connection's allowance before any stream,
		// and one empty DATA frame.
		{"some PRIORITY", false, 100, func(fr *http2.Framer) error {
			return fr.WritePriority(3, http2.PriorityParam{Weight: 15})
		}, false},
		{"some SETTINGS", false, 50, func(fr *http2.Framer) error { return fr.WriteSettings() }, false},
		{"some WINDOW_UPDATE", false, 5, func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, 1) }, false},
		{"one empty DATA", true, 1, func(fr *http2.Framer) error { return fr.WriteData(1, false, nil) }, false},
	}
	other := dial(t, addr)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			before := p.ListenerStats()["relay"].FrameFloods
			got := sendFlood(t, addr, tc.openCall, tc.n, tc.frame)
			after := p.ListenerStats()["relay"].FrameFloods
			t.Logf("%d of %d frames written; GOAWAY %v %q; PING answered %v; frame floods %d → %d", got.sent, tc.n, got.goAway, got.goAwayDD, got.pingAck, before, after)
			if tc.flood {
				if got.goAway == nil || got.goAway.ErrCode != http2.ErrCodeEnhanceYourCalm || got.goAwayDD != "frame_flood" {
					t.Fatalf("GOAWAY %v %q, want ENHANCE_YOUR_CALM \"frame_flood\"", got.goAway, got.goAwayDD)
				}
				if got.pingAck {
					t.Fatal("the connection was still served after its GOAWAY")
				}
				if got.sent == tc.n {
					// The close is seen by the writer once the kernel's
					// buffers fill: a flood that was all written was never
					// stopped.
					t.Fatalf("all %d frames were written", tc.n)
				}
				if after != before+1 {
					t.Errorf("frame floods counted %d → %d, want one more", before, after)
				}
			} else if got.goAway != nil || !got.pingAck || after != before {
				t.Fatalf("a client within the ratios: GOAWAY %v %q, PING answered %v, floods %d → %d; want served", got.goAway, got.goAwayDD, got.pingAck, before, after)
			}
			if o := unary(ctx, other, "/"+echoService+"/Unary", nil, []byte("x")); o.Code != codes.OK {
				t.Fatalf("another client: %v", o)
			}
		})
	}
}
