package telemetry

import (
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/protobuf/encoding/protowire"
)

// The export goroutine writes each batch of hop spans straight into the
// protobuf wire format of an OTLP ExportTraceServiceRequest, in one
// pooled buffer. Building the generated messages and proto.Marshal-ling
// them was most of what OTLP export cost a proxied call (its reflection
// over the AnyValue oneofs above all); writing the bytes costs about a
// quarter of that and allocates nothing in the steady state. The
// messages are the ones the converter built before: export_oracle_test.go
// keeps it, and otlpwire_test.go checks that both decode to equal
// requests.

// Field numbers of the OTLP messages written here
// (opentelemetry/proto/collector/trace/v1/trace_service.proto,
// trace/v1/trace.proto, common/v1/common.proto, resource/v1/resource.proto).
const (
	fieldRequestResourceSpans protowire.Number = 1 // ExportTraceServiceRequest.resource_spans

	fieldResourceSpansResource   protowire.Number = 1
	fieldResourceSpansScopeSpans protowire.Number = 2

	fieldResourceAttributes protowire.Number = 1

	fieldScopeSpansScope protowire.Number = 1
	fieldScopeSpansSpans protowire.Number = 2

	fieldScopeName protowire.Number = 1

	fieldSpanTraceID            protowire.Number = 1
	fieldSpanSpanID             protowire.Number = 2
	fieldSpanTraceState         protowire.Number = 3
	fieldSpanParentSpanID       protowire.Number = 4
	fieldSpanName               protowire.Number = 5
	fieldSpanKind               protowire.Number = 6
	fieldSpanStartTime          protowire.Number = 7
	fieldSpanEndTime            protowire.Number = 8
	fieldSpanAttributes         protowire.Number = 9
	fieldSpanEvents             protowire.Number = 11
	fieldSpanDroppedEventsCount protowire.Number = 12
	fieldSpanLinks              protowire.Number = 13
	fieldSpanStatus             protowire.Number = 15
	fieldSpanFlags              protowire.Number = 16

	fieldEventTime       protowire.Number = 1
	fieldEventName       protowire.Number = 2
	fieldEventAttributes protowire.Number = 3

	fieldLinkTraceID protowire.Number = 1
	fieldLinkSpanID  protowire.Number = 2
	fieldLinkFlags   protowire.Number = 6

	fieldStatusMessage protowire.Number = 2
	fieldStatusCode    protowire.Number = 3

	fieldKeyValueKey   protowire.Number = 1
	fieldKeyValueValue protowire.Number = 2

	fieldAnyString protowire.Number = 1
	fieldAnyBool   protowire.Number = 2
	fieldAnyInt    protowire.Number = 3
	fieldAnyDouble protowire.Number = 4
	fieldAnyArray  protowire.Number = 5

	fieldArrayValues protowire.Number = 1

	// ExportTraceServiceResponse.partial_success and its fields.
	fieldResponsePartialSuccess protowire.Number = 1
	fieldPartialRejectedSpans   protowire.Number = 1
	fieldPartialErrorMessage    protowire.Number = 2
)

// Enum values (trace.proto): Span.SpanKind and Status.StatusCode.
const (
	spanKindServer   = 2
	spanKindClient   = 3
	statusCodeError  = 2
	flagHasIsRemote  = 0x100 // SpanFlags: whether the parent (or a link) is remote is known
	flagIsRemote     = 0x200 // SpanFlags: and it is
	maxPooledWireBuf = 4 << 20
)

// wireEncoder writes requests. It is the export goroutine's: the
// resource and scope are encoded once, attrs is reused.
type wireEncoder struct {
	resource []byte // ResourceSpans.resource, with its tag
	scope    []byte // ScopeSpans.scope, with its tag
	attrs    []attribute.KeyValue
}

func newWireEncoder(serviceName string) *wireEncoder {
	var e wireEncoder
	var at int
	e.resource, at = openMessage(nil, fieldResourceSpansResource)
	e.resource = appendKeyValue(e.resource, fieldResourceAttributes, attribute.String("service.name", serviceName))
	e.resource = closeMessage(e.resource, at)
	e.scope, at = openMessage(nil, fieldScopeSpansScope)
	e.scope = appendString(e.scope, fieldScopeName, instrumentationScope)
	e.scope = closeMessage(e.scope, at)
	return &e
}

// wireBuf is one encoded request. Its bytes may outlive the export call
// (a transport may still be writing them when the response came early),
// so it goes back to the pool only when every holder has released it.
type wireBuf struct {
	b    []byte
	refs atomic.Int32
}

var wireBufPool = sync.Pool{New: func() any { return new(wireBuf) }}

func getWireBuf() *wireBuf {
	w := wireBufPool.Get().(*wireBuf)
	w.refs.Store(1)
	return w
}

// hold adds a holder, who must release the buffer.
func (w *wireBuf) hold() { w.refs.Add(1) }

// release drops a holder; the last one pools the buffer (one much larger
// than batches usually need is left to the collector).
func (w *wireBuf) release() {
	if w.refs.Add(-1) != 0 {
		return
	}
	if cap(w.b) > maxPooledWireBuf {
		w.b = nil
	}
	w.b = w.b[:0]
	wireBufPool.Put(w)
}

// Get and Put make a wireBuf grpc-go's mem.BufferPool for its own bytes:
// grpc-go puts them back when it has written them (see grpcSender).
func (w *wireBuf) Get(length int) *[]byte {
	b := make([]byte, length)
	return &b
}

func (w *wireBuf) Put(*[]byte) { w.release() }

// encode appends the ExportTraceServiceRequest of batch to b: one
// resource (service.name), one scope, the spans in batch order.
func (e *wireEncoder) encode(b []byte, batch []*hopSpan) []byte {
	b, rs := openMessage(b, fieldRequestResourceSpans)
	b = append(b, e.resource...)
	b, ss := openMessage(b, fieldResourceSpansScopeSpans)
	b = append(b, e.scope...)
	for _, s := range batch {
		b = e.span(b, s)
	}
	b = closeMessage(b, ss)
	return closeMessage(b, rs)
}

func (e *wireEncoder) span(b []byte, s *hopSpan) []byte {
	b, at := openMessage(b, fieldScopeSpansSpans)
	b = appendBytes(b, fieldSpanTraceID, s.traceID[:])
	b = appendBytes(b, fieldSpanSpanID, s.spanID[:])
	if ts := s.state.String(); ts != "" {
		b = appendString(b, fieldSpanTraceState, ts)
	}
	if s.parent.IsValid() {
		b = appendBytes(b, fieldSpanParentSpanID, s.parent[:])
	}
	b = appendSpanName(b, s.r, s.method)
	kind := uint64(spanKindServer)
	if s.client {
		kind = spanKindClient
	}
	b = protowire.AppendTag(b, fieldSpanKind, protowire.VarintType)
	b = protowire.AppendVarint(b, kind)
	b = protowire.AppendTag(b, fieldSpanStartTime, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, unixNano(s.start))
	b = protowire.AppendTag(b, fieldSpanEndTime, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, unixNano(s.end))
	b = append(b, s.r.staticWire...)
	e.attrs = s.appendOwnAttrs(e.attrs[:0])
	for _, a := range e.attrs {
		b = appendKeyValue(b, fieldSpanAttributes, a)
	}
	clear(e.attrs) // the values' strings are not kept alive by the encoder
	for i := range s.events {
		ev := &s.events[i]
		var at int
		b, at = openMessage(b, fieldSpanEvents)
		b = protowire.AppendTag(b, fieldEventTime, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, unixNano(ev.time))
		b = appendString(b, fieldEventName, ev.name)
		for _, a := range ev.attrs {
			b = appendKeyValue(b, fieldEventAttributes, a)
		}
		b = closeMessage(b, at)
	}
	if len(s.events) > 0 && s.droppedEvents != 0 {
		b = protowire.AppendTag(b, fieldSpanDroppedEventsCount, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(uint32(s.droppedEvents)))
	}
	if s.link.IsValid() {
		var at int
		b, at = openMessage(b, fieldSpanLinks)
		tid, sid := s.link.TraceID(), s.link.SpanID()
		b = appendBytes(b, fieldLinkTraceID, tid[:])
		b = appendBytes(b, fieldLinkSpanID, sid[:])
		flags := uint32(s.link.TraceFlags()) | flagHasIsRemote
		if s.link.IsRemote() {
			flags |= flagIsRemote
		}
		b = protowire.AppendTag(b, fieldLinkFlags, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, flags)
		b = closeMessage(b, at)
	}
	// The status is always there, empty (unset) unless the hop failed.
	var st int
	b, st = openMessage(b, fieldSpanStatus)
	if s.outcome.IsError() {
		b = protowire.AppendTag(b, fieldStatusMessage, protowire.BytesType)
		b = appendStringValue(b, string(s.outcome), " ", s.code)
		b = protowire.AppendTag(b, fieldStatusCode, protowire.VarintType)
		b = protowire.AppendVarint(b, statusCodeError)
	}
	b = closeMessage(b, st)
	flags := uint32(s.flags) | flagHasIsRemote
	if s.remoteParent {
		flags |= flagIsRemote
	}
	b = protowire.AppendTag(b, fieldSpanFlags, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, flags)
	return closeMessage(b, at)
}

// appendSpanName writes spanName(r, method) without building it.
func appendSpanName(b []byte, r *Route, method string) []byte {
	b = protowire.AppendTag(b, fieldSpanName, protowire.BytesType)
	if r.info.GRPC || strings.HasPrefix(method, "/") {
		return protowire.AppendString(b, validUTF8(strings.TrimPrefix(method, "/")))
	}
	return appendStringValue(b, method, " ", r.info.Name)
}

// appendKeyValue writes a KeyValue as field num, its value as the
// converter did (see converter.value in export_oracle_test.go): strings,
// integers, booleans, floats and string and integer slices as such, any
// other type as its String().
func appendKeyValue(b []byte, num protowire.Number, a attribute.KeyValue) []byte {
	// Strings and integers, most of what hop spans carry, are sized
	// without writing them first.
	switch a.Value.Type() {
	case attribute.STRING:
		v := validUTF8(a.Value.AsString())
		return appendKeyValueHead(b, num, string(a.Key), 1+protowire.SizeBytes(len(v)), fieldAnyString, protowire.BytesType, v)
	case attribute.INT64:
		n := uint64(a.Value.AsInt64())
		b = appendKeyValueHead(b, num, string(a.Key), 1+protowire.SizeVarint(n), fieldAnyInt, protowire.VarintType, "")
		return protowire.AppendVarint(b, n)
	}
	b, kv := openMessage(b, num)
	if a.Key != "" {
		b = appendString(b, fieldKeyValueKey, string(a.Key))
	}
	b, av := openMessage(b, fieldKeyValueValue)
	switch a.Value.Type() {
	case attribute.BOOL:
		b = protowire.AppendTag(b, fieldAnyBool, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(a.Value.AsBool()))
	case attribute.FLOAT64:
		b = protowire.AppendTag(b, fieldAnyDouble, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(a.Value.AsFloat64()))
	case attribute.STRINGSLICE:
		var arr int
		b, arr = openMessage(b, fieldAnyArray)
		for _, s := range a.Value.AsStringSlice() {
			var v int
			b, v = openMessage(b, fieldArrayValues)
			b = protowire.AppendTag(b, fieldAnyString, protowire.BytesType)
			b = appendStringValue(b, s, "", "")
			b = closeMessage(b, v)
		}
		b = closeMessage(b, arr)
	case attribute.INT64SLICE:
		var arr int
		b, arr = openMessage(b, fieldAnyArray)
		for _, n := range a.Value.AsInt64Slice() {
			var v int
			b, v = openMessage(b, fieldArrayValues)
			b = protowire.AppendTag(b, fieldAnyInt, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(n))
			b = closeMessage(b, v)
		}
		b = closeMessage(b, arr)
	default:
		b = protowire.AppendTag(b, fieldAnyString, protowire.BytesType)
		b = appendStringValue(b, a.Value.String(), "", "")
	}
	b = closeMessage(b, av)
	return closeMessage(b, kv)
}

// appendKeyValueHead writes a KeyValue field numbered num up to its
// value's payload: its length, the key, the AnyValue's tag and length,
// the AnyValue's field tag, and str (with its length) for a string value.
// anyLen is the AnyValue's length.
func appendKeyValueHead(b []byte, num protowire.Number, key string, anyLen int, field protowire.Number, typ protowire.Type, str string) []byte {
	key = validUTF8(key)
	kvLen := 1 + protowire.SizeBytes(anyLen)
	if key != "" {
		kvLen += 1 + protowire.SizeBytes(len(key))
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(kvLen))
	if key != "" {
		b = append(b, byte(protowire.EncodeTag(fieldKeyValueKey, protowire.BytesType)))
		b = protowire.AppendString(b, key)
	}
	b = append(b, byte(protowire.EncodeTag(fieldKeyValueValue, protowire.BytesType)))
	b = protowire.AppendVarint(b, uint64(anyLen))
	b = append(b, byte(protowire.EncodeTag(field, typ)))
	if typ == protowire.BytesType {
		b = protowire.AppendString(b, str)
	}
	return b
}

// validUTF8 is s, its invalid sequences replaced by U+FFFD (see
// appendStringValue).
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// appendBytes writes a bytes field.
func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// appendString writes a string field (omitted when empty, as proto3
// does).
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, validUTF8(s))
}

// appendStringValue writes the length and bytes of the string s1+s2+s3.
// A string field must be UTF-8 and values here come from requests (a
// session id, a method): invalid sequences become U+FFFD, as a collector
// would otherwise refuse the whole request. (proto.Marshal refused to
// marshal it, and the whole batch was lost.)
func appendStringValue(b []byte, s1, s2, s3 string) []byte {
	if !utf8.ValidString(s1) || !utf8.ValidString(s2) || !utf8.ValidString(s3) {
		s := strings.ToValidUTF8(s1+s2+s3, "\uFFFD")
		b = protowire.AppendVarint(b, uint64(len(s)))
		return append(b, s...)
	}
	b = protowire.AppendVarint(b, uint64(len(s1)+len(s2)+len(s3)))
	b = append(b, s1...)
	b = append(b, s2...)
	return append(b, s3...)
}

// openMessage writes the tag of a message field numbered num and one
// byte for its length, and returns where the message starts;
// closeMessage writes the length, moving the message when its length
// needs more than one byte. Most messages here (attributes, events,
// status) are shorter than 128 bytes and never move; a span moves once,
// by a byte, and a batch's scope and resource spans once, by two or
// three: far cheaper than sizing every message before writing it.
func openMessage(b []byte, num protowire.Number) ([]byte, int) {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = append(b, 0)
	return b, len(b)
}

func closeMessage(b []byte, start int) []byte {
	n := len(b) - start
	k := protowire.SizeVarint(uint64(n))
	if k == 1 {
		b[start-1] = byte(n)
		return b
	}
	for range k - 1 {
		b = append(b, 0)
	}
	copy(b[start+k-1:], b[start:start+n])
	protowire.AppendVarint(b[:start-1], uint64(n))
	return b
}

// partialSuccess reads an ExportTraceServiceResponse: the spans the
// collector rejected and its message (both zero when it took them all).
func partialSuccess(resp []byte) (rejected int64, msg string, err error) {
	ps, err := lengthField(resp, fieldResponsePartialSuccess)
	if err != nil || ps == nil {
		return 0, "", err
	}
	for len(ps) > 0 {
		num, typ, n := protowire.ConsumeTag(ps)
		if n < 0 {
			return 0, "", protowire.ParseError(n)
		}
		ps = ps[n:]
		switch {
		case num == fieldPartialRejectedSpans && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(ps)
			if n < 0 {
				return 0, "", protowire.ParseError(n)
			}
			rejected, ps = int64(v), ps[n:]
		case num == fieldPartialErrorMessage && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(ps)
			if n < 0 {
				return 0, "", protowire.ParseError(n)
			}
			msg, ps = string(v), ps[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, ps)
			if n < 0 {
				return 0, "", protowire.ParseError(n)
			}
			ps = ps[n:]
		}
	}
	return rejected, msg, nil
}

// lengthField returns the last length-delimited field numbered num of
// message b (the last one wins, as when a parser merges repeated
// occurrences of a scalar), nil if there is none.
func lengthField(b []byte, num protowire.Number) ([]byte, error) {
	var out []byte
	for len(b) > 0 {
		f, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		if f == num && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			out, b = v, b[n:]
			if out == nil {
				out = []byte{}
			}
			continue
		}
		n = protowire.ConsumeFieldValue(f, typ, b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return out, nil
}

func unixNano(t time.Time) uint64 { return uint64(max(0, t.UnixNano())) }
