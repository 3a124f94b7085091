package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestHeaderDecoder: the relay's own header block decoding (readFrame)
// answers every block as the Framer's ReadMetaHeaders does (the same
// fields, the same truncation, the same kind of error), over one
// connection's HPACK state, for blocks in one frame or split over
// CONTINUATIONs.
func TestHeaderDecoder(t *testing.T) {
	enc := func(fields ...hpack.HeaderField) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		for _, f := range fields {
			e.WriteField(f)
		}
		return b.Bytes()
	}
	hf := func(kv ...string) []hpack.HeaderField {
		var out []hpack.HeaderField
		for i := 0; i < len(kv); i += 2 {
			out = append(out, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	req := hf(":method", "POST", ":scheme", "http", ":path", "/a.B/C", ":authority", "x", "content-type", "application/grpc", "te", "trailers")
	cases := []struct {
		name  string
		block []byte
		max   uint32 // the header list size (0: the Framer's default)
		split int    // fragment size (0: one HEADERS frame)
		want  string // the first block's outcome: "fields", "truncated" or kindOf its error
	}{
		{"request", enc(req...), 0, 0, "fields"},
		{"request over continuations", enc(req...), 0, 7, "fields"},
		{"response", enc(hf(":status", "200", "content-type", "application/grpc")...), 0, 0, "fields"},
		{"trailers", enc(hf("grpc-status", "0", "grpc-message", "ok")...), 0, 0, "fields"},
		{"empty block", nil, 0, 0, "fields"},
		{"truncated", enc(append(req, hf("x-big", strings.Repeat("v", 300))...)...), 400, 0, "truncated"},
		{"trailer declarations count", enc(append(req, hf("trailer", "a, b, c, d, e, f, g, h, i, j")...)...), 300, 0, "truncated"},
		{"far past the limit", enc(append(req, hf("x-big", strings.Repeat("v", 3000))...)...), 400, 0, "connection PROTOCOL_ERROR"},
		{"pseudo after regular", enc(hf("content-type", "x", ":path", "/a")...), 0, 0, "stream PROTOCOL_ERROR"},
		{"uppercase name", enc(hf(":path", "/a", "X-Up", "v")...), 0, 0, "stream PROTOCOL_ERROR"},
		{"invalid value", enc(hf(":path", "/a", "x-bad", "a\x00b")...), 0, 0, "stream PROTOCOL_ERROR"},
		{"invalid field, then continuation", enc(hf(":path", "/a", "x-bad", "a\x00b", "x-more", strings.Repeat("m", 40))...), 0, 12, "connection PROTOCOL_ERROR"},
		{"duplicate pseudo", enc(hf(":path", "/a", ":path", "/b")...), 0, 0, "stream PROTOCOL_ERROR"},
		{"unknown pseudo", enc(hf(":foo", "x")...), 0, 0, "stream PROTOCOL_ERROR"},
		{"request and response pseudo", enc(hf(":path", "/a", ":status", "200")...), 0, 0, "stream PROTOCOL_ERROR"},
		{"bad index", []byte{0xff, 0xff, 0xff, 0xff, 0x0f}, 0, 0, "connection COMPRESSION_ERROR"},
		{"huffman garbage", []byte{0x00, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x61}, 0, 0, "connection COMPRESSION_ERROR"},
		{"truncated block", enc(req...)[:5], 0, 0, "connection COMPRESSION_ERROR"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var wire bytes.Buffer
			w := http2.NewFramer(&wire, nil)
			// Twice on one connection: the second block's references to
			// the dynamic table resolve as the first block left it.
			for range 2 {
				writeBlock(t, w, 1, tc.block, tc.split)
			}
			b := wire.Bytes()

			ref := http2.NewFramer(nil, bytes.NewReader(b))
			ref.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			ref.MaxHeaderListSize = tc.max
			c := &h2conn{hdec: newHeaderDecoder(tc.max)}
			c.fr = http2.NewFramer(nil, bytes.NewReader(b))
			for i := range 2 {
				want, werr := ref.ReadFrame()
				got, gerr := c.readFrame()
				if kindOf(werr) != kindOf(gerr) {
					t.Fatalf("block %d: error %v, the Framer's %v", i, gerr, werr)
				}
				if i == 0 {
					// The case tests what it says it does.
					outcome := kindOf(gerr)
					if gerr == nil {
						outcome = "fields"
						if got.(*http2.MetaHeadersFrame).Truncated {
							outcome = "truncated"
						}
					}
					if outcome != tc.want {
						t.Fatalf("first block: %s, want %s", outcome, tc.want)
					}
				}
				if werr != nil {
					return // the connection (or the stream) is done
				}
				wm, gm := want.(*http2.MetaHeadersFrame), got.(*http2.MetaHeadersFrame)
				if gm.StreamID != wm.StreamID || gm.StreamEnded() != wm.StreamEnded() || gm.Truncated != wm.Truncated {
					t.Fatalf("block %d: stream %d ended %v truncated %v, the Framer's %d %v %v", i,
						gm.StreamID, gm.StreamEnded(), gm.Truncated, wm.StreamID, wm.StreamEnded(), wm.Truncated)
				}
				if (gm.Fields == nil) != (wm.Fields == nil) || len(gm.Fields) != len(wm.Fields) {
					t.Fatalf("block %d: fields %v, the Framer's %v", i, gm.Fields, wm.Fields)
				}
				for j := range gm.Fields {
					if gm.Fields[j] != wm.Fields[j] {
						t.Fatalf("block %d: fields %v, the Framer's %v", i, gm.Fields, wm.Fields)
					}
				}
			}
		})
	}
}

// writeBlock writes a header block on stream id, in fragments of split
// bytes (0: one HEADERS frame).
func writeBlock(t *testing.T, w *http2.Framer, id uint32, block []byte, split int) {
	t.Helper()
	n := len(block)
	if split > 0 {
		n = min(split, len(block))
	}
	if err := w.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:n], EndStream: true, EndHeaders: n == len(block)}); err != nil {
		t.Fatal(err)
	}
	for block = block[n:]; len(block) > 0; block = block[n:] {
		n = min(split, len(block))
		if err := w.WriteContinuation(id, n == len(block), block[:n]); err != nil {
			t.Fatal(err)
		}
	}
}

// kindOf names an error as the relay acts on it: none, a stream error or
// a connection error (with its code), or another error.
func kindOf(err error) string {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case err == nil:
		return "none"
	case errors.As(err, &se):
		return "stream " + se.Code.String()
	case errors.As(err, &ce):
		return "connection " + http2.ErrCode(ce).String()
	}
	return "other"
}

// TestUniquePerCallNotIndexed: the fields that are new on every call
// (trace context, grpc-timeout) go out as literals without indexing, so
// the dynamic table keeps the fields that repeat: every block after the
// first is as long as the one before (a table that took them would fill
// up within a few dozen calls and then evict the repeating fields, which
// go out as literals again). Each block decodes to what was written.
func TestUniquePerCallNotIndexed(t *testing.T) {
	cases := []struct {
		name  string
		first string // the block's first field (a table size update goes before it)
	}{
		{"request", ":method"},
		{"unique field first", "traceparent"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var wire bytes.Buffer
			c := &h2conn{fr: http2.NewFramer(&wire, nil)}
			c.enc = hpack.NewEncoder(&c.encBuf)
			c.peerMaxFrame.Store(16384)
			// The peer's SETTINGS_HEADER_TABLE_SIZE: the next block
			// starts with a table size update.
			if err := c.write(&wItem{kind: wTableSize, n: 2048}); err != nil {
				t.Fatal(err)
			}
			dec := http2.NewFramer(nil, &wire)
			dec.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			last := 0
			for i := range 60 {
				fields := []hpack.HeaderField{
					{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
					{Name: ":path", Value: "/bot.v1.NLU/Parse"}, {Name: ":authority", Value: "nlu:7101"},
					{Name: "te", Value: "trailers"},
					{Name: "grpc-timeout", Value: strconv.Itoa(19_000_000+i*37) + "u"},
					{Name: "content-type", Value: "application/grpc"}, {Name: "user-agent", Value: "grpc-go/1.80.0"},
					{Name: "traceparent", Value: fmt.Sprintf("00-%032x-%016x-01", i*7919+1, i*104729+1)},
				}
				if tc.first == "traceparent" {
					// No pseudo-headers (a block of trailers, say), the
					// unique field first.
					fields = append(fields[len(fields)-1:], fields[5:len(fields)-1]...)
				}
				before := wire.Len()
				if err := c.write(&wItem{kind: wHeaders, id: uint32(2*i + 1), fields: fields}); err != nil {
					t.Fatal(err)
				}
				// What the fields that repeat took: the rest is the unique
				// fields' literals, whose lengths vary with their values.
				size := wire.Len() - before
				for _, f := range fields {
					if uniquePerCall(f.Name) {
						size -= len(appendLiteral(nil, f))
					}
				}
				if i > 1 && size != last {
					t.Fatalf("block %d: %d bytes, the one before %d: the dynamic table changed", i, size, last)
				}
				last = size
				f, err := dec.ReadFrame()
				if err != nil {
					t.Fatalf("block %d: %v", i, err)
				}
				got := f.(*http2.MetaHeadersFrame).Fields
				if len(got) != len(fields) {
					t.Fatalf("block %d: decoded %v, wrote %v", i, got, fields)
				}
				for j := range got {
					if got[j].Name != fields[j].Name || got[j].Value != fields[j].Value {
						t.Fatalf("block %d: decoded %v, wrote %v", i, got, fields)
					}
				}
			}
		})
	}
}

// TestAppendVarInt: HPACK integers (RFC 7541 §5.1 and its examples in
// C.1).
func TestAppendVarInt(t *testing.T) {
	cases := []struct {
		name string
		n    byte
		i    uint64
		want []byte
	}{
		{"10 in a 5-bit prefix", 5, 10, []byte{10}},
		{"1337 in a 5-bit prefix", 5, 1337, []byte{31, 154, 10}},
		{"42 in an 8-bit prefix", 8, 42, []byte{42}},
		{"the prefix's maximum", 7, 127, []byte{127, 0}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := appendVarInt(nil, tc.n, 0, tc.i); !bytes.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// BenchmarkRelayWriteHeaders: the writer encoding a request's header
// block for the upstream, as the relay writes one per call.
func BenchmarkRelayWriteHeaders(b *testing.B) {
	c := &h2conn{fr: http2.NewFramer(io.Discard, nil)}
	c.enc = hpack.NewEncoder(&c.encBuf)
	c.peerMaxFrame.Store(16384)
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/bot.v1.NLU/Parse"}, {Name: ":authority", Value: "127.0.0.1:19201"},
		{Name: "te", Value: "trailers"}, {Name: "grpc-timeout", Value: "19999870u"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "user-agent", Value: "grpc-go/1.80.0"},
		{Name: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		fields[5].Value = strconv.Itoa(19_000_000+i%1000) + "u"
		fields[8].Value = fmt.Sprintf("00-%032x-00f067aa0ba902b7-01", i)
		if err := c.write(&wItem{kind: wHeaders, id: 1, fields: fields}); err != nil {
			b.Fatal(err)
		}
	}
}
