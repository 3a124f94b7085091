package proxy_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/hopwatch/hopwatch/routes"
)

// TestOversizeHeadersFrame: a HEADERS frame larger than the 16 KiB both
// listeners advertise (SETTINGS_MAX_FRAME_SIZE's initial value, RFC 9113
// §4.2: a frame carrying a header block that exceeds it is a connection
// error of type FRAME_SIZE_ERROR) closes the connection, and
// its request is not forwarded. Go's HTTP/2 server reads frames of up to
// 1 MiB unless told otherwise, and the HTTP listener answered such a
// request (h2spec http2/4.2/3).
func TestOversizeHeadersFrame(t *testing.T) {
	hold := startHold(t)
	echo := startEcho(t)
	p := limitsProxy(t, routes.ListenerLimits{}, hold.addr, echo.addr)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range grpcRequestFields("/"+holdService+"/Call", "proxy") {
		enc.WriteField(f)
	}
	for i := range 5 { // five 4000-byte fields, as h2spec sends: 20 KB in one frame
		enc.WriteField(hpack.HeaderField{Name: "x-dummy" + string(rune('0'+i)), Value: strings.Repeat("x", 4000)})
	}
	if block.Len() <= 16<<10 {
		t.Fatalf("block is %d bytes, want more than 16 KiB", block.Len())
	}
	for _, kind := range listenerKinds {
		t.Run(kind+" listener", func(t *testing.T) {
			hold.total.Store(0)
			addr := p.Addr(kind).String()
			raw := dialRaw(t, addr)
			if err := raw.open(1, addr, "/"+holdService+"/Call", nil, true); err != nil {
				t.Fatal(err)
			}
			// Stream 1 answered: the SETTINGS exchange is over.
			if !eventually(5*time.Second, func() bool { return raw.headers.Load() >= 1 }) {
				t.Fatalf("the normal stream was not answered")
			}
			err := raw.write(func() error {
				return raw.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block.Bytes(), EndHeaders: true, EndStream: true})
			})
			closed := raw.closedWithin(5 * time.Second)
			t.Logf("write error: %v; GOAWAY: %v; closed: %v; upstream calls: %d", err, raw.goaway.Load(), closed, hold.total.Load())
			// GOAWAY first is a SHOULD (RFC 9113 §5.4.1): net/http sends
			// one, grpc-go just closes.
			if !closed {
				t.Errorf("connection still open after a %d-byte HEADERS frame", block.Len())
			}
			if n := hold.total.Load(); n > 1 {
				t.Errorf("%d calls forwarded, want only the normal one", n)
			}
		})
	}
}
