package proxy

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Resilient routes on a relay listener: a route with retry or fallback
// must hold whole messages (to replay them, or to answer for the
// upstream), which the frame relay never does. Such a call leaves the
// relay after routing: relayMsgStream is a grpc.ServerStream over the
// relay's client stream, so the resilient path (grpcCall, call.go) serves
// it unchanged, with grpc-go's client upstream. Flow control still holds
// the client: its bytes are acknowledged as RecvMsg takes them, so it has
// at most one stream window in flight beyond what the call took (the
// request log, bounded by the replay budget); SendMsg returns once its
// bytes went out within the client's windows.
//
// It must never send a frame on the client stream outside the order
// HTTP/2 and gRPC require (headers, messages, trailers), nor hold more of
// the client's bytes than one message being assembled.

// relayMsgStream is the grpc.ServerStream of a resilient call on a relay
// listener. RecvMsg runs on one goroutine (the request log's reader), the
// other methods on the call's.
type relayMsgStream struct {
	st     *relayStream
	ctx    context.Context
	maxMsg int
	ctype  string // the response's content-type
	comp   string // the request's grpc-encoding

	mu      sync.Mutex // header, trailer
	header  metadata.MD
	trailer metadata.MD
}

// newRelayMsgStream serves st's messages; ctx ends with the call.
func newRelayMsgStream(ctx context.Context, st *relayStream, ctype, comp string) *relayMsgStream {
	st.mu.Lock()
	st.reqSig = make(chan struct{}, 1)
	st.mu.Unlock()
	st.down.c.mu.Lock()
	st.sendSig = make(chan struct{}, 1)
	st.down.c.mu.Unlock()
	return &relayMsgStream{st: st, ctx: ctx, maxMsg: st.srv.maxMsg, ctype: responseContentType(ctype), comp: comp}
}

// responseContentType answers with the request's content-subtype, as
// grpc-go's server does ("application/grpc+proto" stays so).
func responseContentType(req string) string {
	sub, ok := strings.CutPrefix(req, "application/grpc+")
	if !ok || sub == "" {
		return "application/grpc"
	}
	if i := strings.IndexByte(sub, ';'); i >= 0 {
		sub = sub[:i]
	}
	return "application/grpc+" + strings.ToLower(sub)
}

func (s *relayMsgStream) Context() context.Context { return s.ctx }

func (s *relayMsgStream) SetHeader(md metadata.MD) error {
	if md.Len() == 0 {
		return nil
	}
	s.st.mu.Lock()
	sent := s.st.respHeaders
	s.st.mu.Unlock()
	if sent {
		return status.Error(codes.Internal, "transport: the stream is done or WriteHeader was already called")
	}
	s.mu.Lock()
	s.header = metadata.Join(s.header, md)
	s.mu.Unlock()
	return nil
}

// SendHeader sends the response headers: ":status", content-type, then
// the metadata (RFC 9113 §8.3.2; gRPC over HTTP/2 "Response-Headers").
func (s *relayMsgStream) SendHeader(md metadata.MD) error {
	s.mu.Lock()
	hdr := metadata.Join(s.header, md)
	s.header = nil
	s.mu.Unlock()
	fields := make([]hpack.HeaderField, 0, 2+hdr.Len())
	fields = append(fields, hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-type", Value: s.ctype})
	fields = appendMetadata(fields, hdr)
	st := s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.respDone {
		return s.doneErrLocked()
	}
	if st.respHeaders {
		return status.Error(codes.Internal, "transport: the stream is done or WriteHeader was already called")
	}
	st.respHeaders = true
	// Queued under st.mu: the relay's own status (fail) cannot overtake it.
	st.down.c.queue(wItem{kind: wHeaders, id: st.down.id, fields: fields})
	return nil
}

func (s *relayMsgStream) SetTrailer(md metadata.MD) {
	if md.Len() == 0 {
		return
	}
	s.mu.Lock()
	s.trailer = metadata.Join(s.trailer, md)
	s.mu.Unlock()
}

// SendMsg sends one message (a *frame) as DATA frames within the client's
// windows and the peer's max frame size (h2conn.send), and returns once
// all of it went to the connection's writer: a client that does not read
// holds the call, not the proxy's memory.
func (s *relayMsgStream) SendMsg(m any) error {
	f, ok := m.(*frame)
	if !ok {
		return status.Errorf(codes.Internal, "hopwatch: cannot send %T", m)
	}
	n := f.data.Len()
	if n > s.maxMsg {
		f.release()
		return status.Errorf(codes.ResourceExhausted, "trying to send message larger than max (%d vs. %d)", n, s.maxMsg)
	}
	st := s.st
	st.mu.Lock()
	hdrs := st.respHeaders
	st.mu.Unlock()
	if !hdrs {
		if err := s.SendHeader(nil); err != nil {
			f.release()
			return err
		}
	}
	b := make([]byte, 5+n)
	binary.BigEndian.PutUint32(b[1:5], uint32(n))
	f.data.CopyTo(b[5:])
	f.release()
	st.mu.Lock()
	if st.respDone {
		err := s.doneErrLocked()
		st.mu.Unlock()
		return err
	}
	st.mu.Unlock()
	c, l := st.down.c, st.down
	c.send(l, b, false, nil)
	for {
		c.mu.Lock()
		left := len(l.pending)
		c.mu.Unlock()
		if left == 0 {
			return nil
		}
		select {
		case <-st.sendSig:
		case <-st.done:
			return s.doneErr()
		case <-s.ctx.Done():
			return status.FromContextError(s.ctx.Err()).Err()
		}
	}
}

// RecvMsg assembles the next request message into a *frame, taking the
// client's bytes as they come and acknowledging them (WINDOW_UPDATE) as
// it takes them.
func (s *relayMsgStream) RecvMsg(m any) error {
	f, ok := m.(*frame)
	if !ok {
		return status.Errorf(codes.Internal, "hopwatch: cannot receive into %T", m)
	}
	var hdr [5]byte
	if err := s.read(hdr[:], true); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if int64(n) > int64(s.maxMsg) {
		return status.Errorf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, s.maxMsg)
	}
	b := make([]byte, n)
	if err := s.read(b, false); err != nil {
		return err
	}
	if hdr[0] != 0 {
		var err error
		if b, err = s.decompress(b); err != nil {
			return err
		}
	}
	f.data = mem.BufferSlice{mem.SliceBuffer(b)}
	return nil
}

// decompress inflates a compressed message with the request's
// grpc-encoding, held to max_message_bytes as grpc-go's server does.
func (s *relayMsgStream) decompress(b []byte) ([]byte, error) {
	if s.comp == "" || s.comp == "identity" {
		return nil, status.Error(codes.Internal, "grpc: compressed flag set with identity or empty encoding")
	}
	c := encoding.GetCompressor(s.comp)
	if c == nil {
		return nil, status.Errorf(codes.Unimplemented, "grpc: Decompressor is not installed for grpc-encoding %q", s.comp)
	}
	r, err := c.Decompress(bytes.NewReader(b))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "grpc: failed to decompress the received message: %v", err)
	}
	out, err := io.ReadAll(io.LimitReader(r, int64(s.maxMsg)+1))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "grpc: failed to decompress the received message: %v", err)
	}
	if len(out) > s.maxMsg {
		return nil, status.Errorf(codes.ResourceExhausted, "grpc: received message after decompression larger than max %d", s.maxMsg)
	}
	return out, nil
}

// read fills p from the client's DATA. At a message's start, the end of
// the request is io.EOF; within one, it is a truncated message.
func (s *relayMsgStream) read(p []byte, start bool) error {
	st := s.st
	got := 0
	for got < len(p) {
		st.mu.Lock()
		took := 0
		for got < len(p) && len(st.reqPending) > 0 {
			ch := st.reqPending[0]
			k := copy(p[got:], ch.b)
			got += k
			took += k
			if k == len(ch.b) {
				if ch.buf != nil {
					ch.buf.release()
				}
				st.reqPending[0] = relayChunk{}
				st.reqPending = st.reqPending[1:]
			} else {
				st.reqPending[0].b = ch.b[k:]
			}
		}
		ended, done := st.reqEnd, st.respDone
		var err error
		if done {
			err = s.doneErrLocked()
		}
		st.mu.Unlock()
		if took > 0 {
			// Taken by the call: the client may send as much again.
			st.down.c.giveBack(st.down, int32(took))
		}
		switch {
		case got == len(p):
			return nil
		case done:
			return err
		case ended && got == 0 && start:
			return io.EOF
		case ended:
			return status.Error(codes.Internal, "grpc: client sent a truncated message")
		}
		select {
		case <-st.reqSig:
		case <-st.done:
		}
	}
	return nil
}

// doneErr is the error of a call whose response end is decided.
func (s *relayMsgStream) doneErr() error {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	return s.doneErrLocked()
}

func (s *relayMsgStream) doneErrLocked() error {
	if s.st.canceled {
		return status.Error(codes.Canceled, context.Canceled.Error())
	}
	if s.st.code == codes.OK {
		return status.Error(codes.Internal, "transport: the stream is done")
	}
	return status.Error(s.st.code, s.st.msg)
}

// end sends the call's status in trailers (a trailers-only response when
// no headers went out), encoded as grpc-go's server does: grpc-status,
// grpc-message percent-encoded, grpc-status-details-bin when the status
// has details, then the trailer metadata.
func (s *relayMsgStream) end(err error) {
	stt := status.Convert(err)
	s.mu.Lock()
	hdr, tr := s.header, s.trailer
	s.mu.Unlock()
	st := s.st
	st.mu.Lock()
	if st.respDone {
		st.mu.Unlock()
		return
	}
	st.respDone = true
	only := !st.respHeaders
	st.respHeaders = true
	st.setResultLocked(stt.Code(), stt.Message(), false)
	st.mu.Unlock()
	var fields []hpack.HeaderField
	if only {
		fields = append(fields, hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-type", Value: s.ctype})
		fields = appendMetadata(fields, hdr)
	}
	fields = append(fields, hpack.HeaderField{Name: "grpc-status", Value: strconv.Itoa(int(stt.Code()))})
	if msg := stt.Message(); msg != "" {
		fields = append(fields, hpack.HeaderField{Name: "grpc-message", Value: encodeGRPCMessage(msg)})
	}
	if p := stt.Proto(); p != nil && len(p.Details) > 0 {
		if b, err := proto.Marshal(p); err == nil {
			fields = append(fields, hpack.HeaderField{Name: "grpc-status-details-bin", Value: base64.RawStdEncoding.EncodeToString(b)})
		}
	}
	fields = appendMetadata(fields, tr)
	st.down.c.send(st.down, nil, true, fields)
}

// appendMetadata encodes md as header fields, as grpc-go does: binary
// values (-bin keys) base64 without padding, reserved names left out.
func appendMetadata(fields []hpack.HeaderField, md metadata.MD) []hpack.HeaderField {
	for k, vs := range md {
		if reservedGRPCHeader(k) {
			continue
		}
		for _, v := range vs {
			if strings.HasSuffix(k, "-bin") {
				v = base64.RawStdEncoding.EncodeToString([]byte(v))
			}
			fields = append(fields, hpack.HeaderField{Name: k, Value: v})
		}
	}
	return fields
}

// reservedGRPCHeader reports the names gRPC over HTTP/2 owns, never
// metadata (grpc-go internal/transport isReservedHeader).
func reservedGRPCHeader(k string) bool {
	switch k {
	case "content-type", "user-agent", "grpc-message-type", "grpc-encoding", "grpc-message", "grpc-status", "grpc-timeout", "grpc-status-details-bin", "te":
		return true
	}
	return strings.HasPrefix(k, ":")
}

// errBadBinaryMetadata: a -bin value that is not base64.
var errBadBinaryMetadata = errors.New("malformed binary metadata")

// incomingMetadata is a request's metadata as grpc-go's server hands it
// to a handler: -bin values decoded, the names gRPC owns left out
// (:authority and user-agent stay), and the request's grpc-encoding.
func incomingMetadata(h relayHeader) (md metadata.MD, comp string, err error) {
	md = make(metadata.MD, len(h))
	for _, f := range h {
		switch f.Name {
		case "grpc-encoding":
			comp = f.Value
			continue
		case ":authority", "user-agent", "content-type":
		default:
			if reservedGRPCHeader(f.Name) {
				continue
			}
		}
		v := f.Value
		if strings.HasSuffix(f.Name, "-bin") {
			b, derr := decodeBinHeader(v)
			if derr != nil {
				return nil, "", fmt.Errorf("%w: %s: %w", errBadBinaryMetadata, f.Name, derr)
			}
			v = string(b)
		}
		md[f.Name] = append(md[f.Name], v)
	}
	return md, comp, nil
}

// decodeBinHeader accepts padded and unpadded base64, as grpc-go does.
func decodeBinHeader(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

// serveMessages serves a routed call whose route needs whole messages
// (rt.res) through the resilient path. clientDL is the client's own
// deadline (grpc-timeout; zero: none): the route's timeout is the call's
// to apply, as on grpc-go's path.
func (st *relayStream) serveMessages(gen *generation, rt *route, md relayHeader, method, ctype string, clientDL time.Time) {
	p := st.srv.p
	ctx, cancel := context.WithCancel(p.ctx)
	defer cancel()
	if !clientDL.IsZero() {
		var c2 context.CancelFunc
		ctx, c2 = context.WithDeadline(ctx, clientDL)
		defer c2()
	}
	// The client's reset (or its connection's end) cancels the call's
	// context, as grpc-go's server stream does.
	go func() {
		select {
		case <-st.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	caller := gen.listeners[st.srv.listener].callerOf(&md, st.down.c.tlsState)
	mdd, comp, err := incomingMetadata(md)
	ss := newRelayMsgStream(ctx, st, ctype, comp)
	if err != nil {
		ss.end(status.Error(codes.Internal, "hopwatch: "+err.Error()))
	} else {
		ss.end(p.serveRoutedGRPC(ctx, ss, rt, mdd, method, caller))
	}
	// The trailers need no window, but may follow a message still queued
	// for the writer; the call is over once they went out.
	t := time.NewTimer(time.Second)
	select {
	case <-st.done:
	case <-t.C:
	}
	t.Stop()
}
