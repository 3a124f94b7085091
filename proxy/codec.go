package proxy

import (
	"fmt"

	"google.golang.org/grpc/mem"
)

// frame is one gRPC message as received: its bytes are never decoded. The
// buffers are reference counted by grpc-go's mem package, so a message moves
// from the inbound stream to the outbound one without a copy.
type frame struct {
	data mem.BufferSlice
}

// rawCodec is the pass-through codec for both the listener's grpc.Server and
// the upstream ClientConns. Its empty name keeps grpc-go from adding a
// content-subtype the client never sent (see setCallInfoCodec in grpc-go:
// a forced codec's name becomes the subtype).
type rawCodec struct{}

func (rawCodec) Name() string { return "" }

// Marshal hands the frame's buffers to grpc-go, which frees them once written
// (encoding.CodecV2 contract), so the frame gives up its reference.
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("hopwatch: raw codec cannot marshal %T", v)
	}
	out := f.data
	f.data = nil
	return out, nil
}

// Unmarshal keeps a reference to data, which grpc-go frees when Unmarshal
// returns.
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("hopwatch: raw codec cannot unmarshal into %T", v)
	}
	data.Ref()
	f.data = data
	return nil
}

// release frees a frame's buffers that were received but never sent. It is
// safe on a nil frame.
func (f *frame) release() {
	if f != nil && f.data != nil {
		f.data.Free()
		f.data = nil
	}
}
