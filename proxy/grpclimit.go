package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
)

// grpcLimitHandler applies the listener's max_message_bytes to gRPC
// requests that arrive on an http listener, as the grpc listener's own
// server does: the request body is a sequence of length-prefixed messages
// (gRPC over HTTP/2: 1 byte compressed flag, 4 bytes big-endian length),
// and a message announced larger than the limit ends the call with
// RESOURCE_EXHAUSTED before its bytes are forwarded.
type grpcLimitHandler struct {
	next   http.Handler
	maxMsg int
}

func (h grpcLimitHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !isGRPCRequest(r) || r.Body == nil || r.Body == http.NoBody {
		h.next.ServeHTTP(w, r)
		return
	}
	out := r.WithContext(r.Context()) // a shallow copy: the inbound request is untouched
	out.Body = &msgLimitReader{r: r.Body, max: uint32(h.maxMsg)}
	h.next.ServeHTTP(w, out)
}

// errMessageTooLarge ends a gRPC call whose client sent a message over the
// listener's limit.
type errMessageTooLarge struct{ size, max uint32 }

func (e *errMessageTooLarge) Error() string {
	// grpc-go's own wording, so clients see the same text on both listeners.
	return fmt.Sprintf("grpc: received message larger than max (%d vs. %d)", e.size, e.max)
}

// msgLimitReader passes a gRPC request body through, reading the message
// prefixes as they go by; it keeps no message bytes.
type msgLimitReader struct {
	r    io.ReadCloser
	max  uint32
	hdr  [5]byte
	nhdr int    // prefix bytes seen of the next message
	left uint64 // bytes of the current message still to pass
	err  error
}

func (m *msgLimitReader) Read(p []byte) (int, error) {
	if m.err != nil {
		return 0, m.err
	}
	n, err := m.r.Read(p)
	for i := 0; i < n; {
		if m.left > 0 {
			k := min(m.left, uint64(n-i))
			m.left -= k
			i += int(k)
			continue
		}
		m.hdr[m.nhdr] = p[i]
		m.nhdr++
		i++
		if m.nhdr < len(m.hdr) {
			continue
		}
		m.nhdr = 0
		size := binary.BigEndian.Uint32(m.hdr[1:])
		if size > m.max {
			// Forward what came before this message's prefix, then fail.
			m.err = &errMessageTooLarge{size: size, max: m.max}
			return max(i-len(m.hdr), 0), m.err
		}
		m.left = uint64(size)
	}
	return n, err
}

func (m *msgLimitReader) Close() error { return m.r.Close() }
