package proxy_test

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/hopwatch/hopwatch/routes"
)

// FuzzRelayHeaders sends the frame relay a request whose header block is
// arbitrary bytes (HPACK as a hostile client writes it: bad indexes,
// oversized literals, Huffman garbage, missing or repeated pseudo-headers,
// connection-specific fields) and requires an answer on the stream or
// the connection (a response, RST_STREAM or GOAWAY) within the deadline,
// never a hang or a crash; the proxy keeps serving other clients.
func FuzzRelayHeaders(f *testing.F) {
	enc := func(fields ...hpack.HeaderField) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		for _, hf := range fields {
			e.WriteField(hf)
		}
		return b.Bytes()
	}
	base := grpcRequestFields("/"+echoService+"/Unary", "x")
	f.Add(enc(base...))
	f.Add(enc(append(base, hpack.HeaderField{Name: "connection", Value: "close"})...))
	f.Add(enc(append(base[:2], hpack.HeaderField{Name: ":path", Value: "/" + echoService + "/../x"})...))
	f.Add(enc(append(base, hpack.HeaderField{Name: "grpc-timeout", Value: "99999999H"})...))
	f.Add(enc(hpack.HeaderField{Name: ":method", Value: "GET"}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})                         // index far out of range
	f.Add([]byte{0x3f, 0xe1, 0xff, 0xff, 0xff, 0x0f})                   // dynamic table size update, too large
	f.Add([]byte{0x00, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x61}) // Huffman garbage

	backend := startEcho(f)
	p := startProxy(f, &routes.Spec{
		Listeners: []routes.Listener{inListener("relay", "relay")},
		Routes:    []routes.Route{{Name: "echo", Listener: "relay", Upstream: "echo"}},
		Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{backend.addr}}},
	})
	addr := p.Addr("relay").String()
	f.Fuzz(func(t *testing.T, block []byte) {
		if len(block) > 16<<10 {
			return
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		bw := bufio.NewWriter(c)
		fr := http2.NewFramer(bw, c)
		bw.WriteString(http2.ClientPreface)
		fr.WriteSettings()
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true, EndStream: true})
		if err := bw.Flush(); err != nil {
			t.Fatal(err)
		}
		for {
			fm, err := fr.ReadFrame()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("no answer to a %d-byte header block within 10s", len(block))
				}
				return // the connection was closed: an answer too
			}
			switch fm := fm.(type) {
			case *http2.GoAwayFrame:
				return
			case *http2.RSTStreamFrame:
				if fm.StreamID == 1 {
					return
				}
			case *http2.HeadersFrame:
				if fm.StreamID == 1 && fm.StreamEnded() {
					return
				}
			case *http2.DataFrame:
				if fm.StreamID == 1 && fm.StreamEnded() {
					return
				}
			}
		}
	})
}
