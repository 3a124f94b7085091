package proxy

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A relay connection decodes its peer's header blocks itself rather than
// through the Framer's ReadMetaHeaders, which allocates a closure, its
// captured state, a MetaHeadersFrame and a growing field slice for every
// block (about ten allocations a block, three blocks a unary call). Here
// the decoder's emit function and the field scratch are the connection's,
// set up once; a block costs one allocation, its fields' own slice (the
// handler keeps them). The checks are the Framer's (x/net/http2
// readMetaFrame), in the same order, with the same errors on the wire:
// a field that is not valid HTTP/2 or a pseudo-header after a regular one
// is a stream error (PROTOCOL_ERROR); a block past the header list size
// is Truncated (its fields beyond the limit are not kept); a block far
// past it, or anything after an invalid field, ends the connection
// (PROTOCOL_ERROR); an HPACK error ends it with COMPRESSION_ERROR. HPACK
// state is per connection (RFC 7541 §2.2): every block is decoded, in
// order, by its connection's decoder, and only on its reader goroutine.
type headerDecoder struct {
	dec     *hpack.Decoder
	max     uint32 // the header list size we advertised
	fields  []hpack.HeaderField
	headers uint32 // what the list may still hold, for fields and for "trailer" declarations
	trailer uint32
	regular bool // a regular field was seen: no pseudo-header may follow
	trunc   bool
	invalid error
	meta    http2.MetaHeadersFrame // returned by read, reused: callers keep only its Fields
}

// relayDefaultMaxHeaderList is the Framer's limit when none is set.
const relayDefaultMaxHeaderList = 16 << 20

func newHeaderDecoder(maxHeaderList uint32) *headerDecoder {
	if maxHeaderList == 0 {
		maxHeaderList = relayDefaultMaxHeaderList
	}
	d := &headerDecoder{max: maxHeaderList}
	d.dec = hpack.NewDecoder(4096, d.emit)
	if int(maxHeaderList) > 0 {
		d.dec.SetMaxStringLength(int(maxHeaderList))
	}
	return d
}

var (
	errPseudoAfterRegular = errors.New("pseudo header field after regular")
	errMixPseudoHeaders   = errors.New("mix of request and response pseudo headers")
)

func (d *headerDecoder) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		// The value may be sensitive: not in the error.
		d.invalid = fmt.Errorf("invalid header field value for %q", hf.Name)
	}
	if strings.HasPrefix(hf.Name, ":") {
		if d.regular {
			d.invalid = errPseudoAfterRegular
		}
	} else {
		d.regular = true
		if !validWireHeaderName(hf.Name) {
			d.invalid = fmt.Errorf("invalid header field name %q", hf.Name)
		}
	}
	if d.invalid != nil {
		d.dec.SetEmitEnabled(false)
		return
	}
	remain := &d.headers
	var size uint32
	if hf.Name == "trailer" {
		// As the Framer counts a trailer declaration: each field it
		// names costs a field's overhead.
		remain = &d.trailer
		n := strings.Count(hf.Value, ",") + 1
		size = uint32(len(hf.Value)-n+1) + uint32(n)*hpack.HeaderField{}.Size()
	} else {
		size = hf.Size()
	}
	if size > *remain {
		d.dec.SetEmitEnabled(false)
		d.trunc = true
		d.headers, d.trailer = 0, 0
		return
	}
	*remain -= size
	d.fields = append(d.fields, hf)
}

// validWireHeaderName reports a header name valid in HTTP/2: a token, in
// lowercase (RFC 9113 §8.2.1).
func validWireHeaderName(v string) bool {
	if len(v) == 0 {
		return false
	}
	for _, r := range v {
		if !httpguts.IsTokenRune(r) || ('A' <= r && r <= 'Z') {
			return false
		}
	}
	return true
}

// readFrame is fr.ReadFrame with HEADERS and their CONTINUATIONs decoded
// into one *http2.MetaHeadersFrame (see headerDecoder), which is valid
// until the next call; its Fields are the caller's to keep.
func (c *h2conn) readFrame() (http2.Frame, error) {
	f, err := c.fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	hf, ok := f.(*http2.HeadersFrame)
	if !ok {
		return f, nil
	}
	return c.hdec.read(c.fr, hf)
}

func (d *headerDecoder) read(fr *http2.Framer, hf *http2.HeadersFrame) (http2.Frame, error) {
	d.fields = d.fields[:0]
	d.headers, d.trailer = d.max, d.max
	d.regular, d.trunc, d.invalid = false, false, nil
	d.dec.SetEmitEnabled(true)
	frag, ended := hf.HeaderBlockFragment(), hf.HeadersEnded()
	for {
		// A fragment far past what the list may still hold is not
		// decoded, nor anything after an invalid field (the Framer's
		// rules: the connection ends).
		if int64(len(frag)) > 2*int64(d.headers+d.trailer) || d.invalid != nil {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := d.dec.Write(frag); err != nil {
			return nil, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		// The Framer's frame order check lets only a CONTINUATION of
		// this stream follow; checked again so that a change there can
		// never become a panic on a peer's input.
		cf, ok := f.(*http2.ContinuationFrame)
		if !ok {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	if err := d.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if d.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: d.invalid}
	}
	if err := checkPseudos(d.fields); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	var fields []hpack.HeaderField
	if len(d.fields) > 0 {
		// The block's own: the handler keeps them (nil for an empty
		// block, as the Framer's).
		fields = make([]hpack.HeaderField, len(d.fields))
		copy(fields, d.fields)
		clear(d.fields) // the scratch holds no strings of an old block
	}
	d.meta = http2.MetaHeadersFrame{HeadersFrame: hf, Fields: fields, Truncated: d.trunc}
	return &d.meta, nil
}

// checkPseudos is the Framer's check of a block's pseudo-headers: known
// ones, none twice, not both a request's and a response's.
func checkPseudos(fields []hpack.HeaderField) error {
	var req, resp bool
	for i, hf := range fields {
		if !hf.IsPseudo() {
			break
		}
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			req = true
		case ":status":
			resp = true
		default:
			return fmt.Errorf("invalid pseudo-header %q", hf.Name)
		}
		for _, hf2 := range fields[:i] {
			if hf.Name == hf2.Name {
				return fmt.Errorf("duplicate pseudo-header %q", hf.Name)
			}
		}
	}
	if req && resp {
		return errMixPseudoHeaders
	}
	return nil
}

// uniquePerCall names the fields whose value is new on every call: the
// trace context the relay writes for each attempt, and the deadline that
// is left. Added to the HPACK dynamic table, as the encoder adds any
// field it has not seen, each would be sent once and then evicted,
// evicting with it the fields that do repeat (method, authority,
// content-type, user agent) so that they go out as literals again, and
// costing both encoders and decoders a table insertion and eviction for
// nothing: the writer sends them as literals without indexing instead.
func uniquePerCall(name string) bool {
	switch name {
	case "traceparent", "grpc-timeout", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid":
		return true
	}
	return false
}

// appendLiteral appends f as a literal header field without indexing and
// with a literal name (RFC 7541 §6.2.2), its strings Huffman-coded when
// that is shorter (§5.2), as x/net's encoder codes them.
func appendLiteral(dst []byte, f hpack.HeaderField) []byte {
	dst = append(dst, 0)
	dst = appendString(dst, f.Name)
	return appendString(dst, f.Value)
}

func appendString(dst []byte, s string) []byte {
	if n := hpack.HuffmanEncodeLength(s); n < uint64(len(s)) {
		dst = appendVarInt(dst, 7, 0x80, n)
		return hpack.AppendHuffmanString(dst, s)
	}
	dst = appendVarInt(dst, 7, 0, uint64(len(s)))
	return append(dst, s...)
}

// appendVarInt appends i as an HPACK integer with an n-bit prefix
// (RFC 7541 §5.1); flags are the first byte's bits above the prefix.
func appendVarInt(dst []byte, n byte, flags byte, i uint64) []byte {
	k := uint64((1 << n) - 1)
	if i < k {
		return append(dst, flags|byte(i))
	}
	dst = append(dst, flags|byte(k))
	for i -= k; i >= 128; i >>= 7 {
		dst = append(dst, byte(0x80|(i&0x7f)))
	}
	return append(dst, byte(i))
}
