package telemetry

import (
	"go.opentelemetry.io/otel/attribute"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// oracleRequest is the request the exporter sent for batch before
// otlpwire.go: the converter's resource spans, with the resource and
// scope the exporter made.
func oracleRequest(serviceName string, batch []*hopSpan) *coltracepb.ExportTraceServiceRequest {
	var c converter
	res := &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{
		Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: serviceName}},
	}}}
	scope := &commonpb.InstrumentationScope{Name: instrumentationScope}
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: c.resourceSpans(res, scope, batch)}
}

// converter turns hop spans into OTLP protobuf messages: it is what the
// exporter did before it wrote the wire format itself (otlpwire.go), kept
// as the oracle the encoder's output must decode equal to. Its messages
// are reused from batch to batch.
type converter struct {
	spans  []tracepb.Span
	spanPs []*tracepb.Span
	kvs    []commonpb.KeyValue
	kvPs   []*commonpb.KeyValue
	vals   []commonpb.AnyValue
	strs   []commonpb.AnyValue_StringValue
	ints   []commonpb.AnyValue_IntValue
	status []tracepb.Status
	events []tracepb.Span_Event
	evPs   []*tracepb.Span_Event
	links  []tracepb.Span_Link
	linkPs []*tracepb.Span_Link
	ids    []byte // trace and span ids, back to back
	attrs  []attribute.KeyValue
	rs     [1]*tracepb.ResourceSpans
	ss     tracepb.ScopeSpans
	rspans tracepb.ResourceSpans
}

// next returns the next element of *pool, growing it. A grown pool's
// earlier elements stay where they were, in the old array, for the
// pointers already handed out.
func next[T any](pool *[]T) *T {
	if len(*pool) == cap(*pool) {
		*pool = make([]T, 0, max(64, 2*cap(*pool)))
	}
	*pool = (*pool)[:len(*pool)+1]
	return &(*pool)[len(*pool)-1]
}

func (c *converter) reset() {
	c.spans, c.kvs, c.vals, c.strs, c.ints = c.spans[:0], c.kvs[:0], c.vals[:0], c.strs[:0], c.ints[:0]
	c.status, c.events, c.links, c.ids = c.status[:0], c.events[:0], c.links[:0], c.ids[:0]
	clear(c.spanPs)
	clear(c.kvPs)
	clear(c.evPs)
	clear(c.linkPs)
	c.spanPs, c.kvPs, c.evPs, c.linkPs = c.spanPs[:0], c.kvPs[:0], c.evPs[:0], c.linkPs[:0]
}

// resourceSpans converts batch: one resource (service.name), one scope.
func (c *converter) resourceSpans(res *resourcepb.Resource, scope *commonpb.InstrumentationScope, batch []*hopSpan) []*tracepb.ResourceSpans {
	for _, s := range batch {
		c.spanPs = append(c.spanPs, c.span(s))
	}
	c.ss.Scope, c.ss.Spans = scope, c.spanPs
	c.rspans.Resource, c.rspans.ScopeSpans = res, []*tracepb.ScopeSpans{&c.ss}
	c.rs[0] = &c.rspans
	return c.rs[:]
}

func (c *converter) id(b []byte) []byte {
	if len(c.ids)+len(b) > cap(c.ids) {
		c.ids = make([]byte, 0, max(4096, 2*cap(c.ids))) // earlier ids stay in the old array
	}
	c.ids = append(c.ids, b...)
	return c.ids[len(c.ids)-len(b) : len(c.ids) : len(c.ids)]
}

// Span flags (OTLP trace.proto, SpanFlags), from the generated code.
const (
	oracleHasIsRemote = uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)
	oracleIsRemote    = uint32(tracepb.SpanFlags_SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)
)

func (c *converter) span(s *hopSpan) *tracepb.Span {
	p := next(&c.spans)
	*p = tracepb.Span{}
	p.TraceId = c.id(s.traceID[:])
	p.SpanId = c.id(s.spanID[:])
	p.TraceState = s.state.String()
	if s.parent.IsValid() {
		p.ParentSpanId = c.id(s.parent[:])
	}
	p.Flags = uint32(s.flags) | oracleHasIsRemote
	if s.remoteParent {
		p.Flags |= oracleIsRemote
	}
	p.Name = spanName(s.r, s.method)
	p.Kind = tracepb.Span_SPAN_KIND_SERVER
	if s.client {
		p.Kind = tracepb.Span_SPAN_KIND_CLIENT
	}
	p.StartTimeUnixNano = unixNano(s.start)
	p.EndTimeUnixNano = unixNano(s.end)
	c.attrs = s.appendAttrs(c.attrs[:0])
	p.Attributes = c.keyValues(c.attrs)
	if len(s.events) > 0 {
		first := len(c.evPs)
		for i := range s.events {
			ev := next(&c.events)
			*ev = tracepb.Span_Event{Name: s.events[i].name, TimeUnixNano: unixNano(s.events[i].time)}
			ev.Attributes = c.keyValues(s.events[i].attrs)
			c.evPs = append(c.evPs, ev)
		}
		p.Events = c.evPs[first:len(c.evPs):len(c.evPs)]
		p.DroppedEventsCount = uint32(s.droppedEvents)
	}
	if s.link.IsValid() {
		l := next(&c.links)
		tid, sid := s.link.TraceID(), s.link.SpanID()
		*l = tracepb.Span_Link{TraceId: c.id(tid[:]), SpanId: c.id(sid[:]), Flags: uint32(s.link.TraceFlags()) | oracleHasIsRemote}
		if s.link.IsRemote() {
			l.Flags |= oracleIsRemote
		}
		c.linkPs = append(c.linkPs, l)
		p.Links = c.linkPs[len(c.linkPs)-1 : len(c.linkPs) : len(c.linkPs)]
	}
	st := next(&c.status)
	*st = tracepb.Status{}
	if s.outcome.IsError() {
		st.Code, st.Message = tracepb.Status_STATUS_CODE_ERROR, string(s.outcome)+" "+s.code
	}
	p.Status = st
	return p
}

func (c *converter) keyValues(attrs []attribute.KeyValue) []*commonpb.KeyValue {
	if len(attrs) == 0 {
		return nil
	}
	first := len(c.kvPs)
	for _, a := range attrs {
		kv := next(&c.kvs)
		kv.Key, kv.Value = string(a.Key), c.value(a.Value)
		c.kvPs = append(c.kvPs, kv)
	}
	return c.kvPs[first:len(c.kvPs):len(c.kvPs)]
}

// value converts as the OTLP exporter does (strings and integers, what
// hop spans carry, from the pools; the rest allocated).
func (c *converter) value(v attribute.Value) *commonpb.AnyValue {
	av := next(&c.vals)
	switch v.Type() {
	case attribute.STRING:
		sv := next(&c.strs)
		sv.StringValue = v.AsString()
		av.Value = sv
	case attribute.INT64:
		iv := next(&c.ints)
		iv.IntValue = v.AsInt64()
		av.Value = iv
	case attribute.BOOL:
		av.Value = &commonpb.AnyValue_BoolValue{BoolValue: v.AsBool()}
	case attribute.FLOAT64:
		av.Value = &commonpb.AnyValue_DoubleValue{DoubleValue: v.AsFloat64()}
	case attribute.STRINGSLICE:
		ss := v.AsStringSlice()
		vals := make([]*commonpb.AnyValue, len(ss))
		for i, s := range ss {
			vals[i] = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
		}
		av.Value = &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vals}}
	case attribute.INT64SLICE:
		is := v.AsInt64Slice()
		vals := make([]*commonpb.AnyValue, len(is))
		for i, n := range is {
			vals[i] = &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: n}}
		}
		av.Value = &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: vals}}
	default:
		av.Value = &commonpb.AnyValue_StringValue{StringValue: v.String()}
	}
	return av
}
