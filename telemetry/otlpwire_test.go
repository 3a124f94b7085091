package telemetry

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// checkWire encodes batch and checks that the bytes decode, with
// proto.Unmarshal, to a request proto.Equal to the converter's (the
// exporter's before otlpwire.go). Strings that are not UTF-8 are the one
// difference: proto.Marshal refused the converter's request (the whole
// batch was lost), the encoder writes them with U+FFFD for each invalid
// sequence.
func checkWire(t *testing.T, service string, batch []*hopSpan) {
	t.Helper()
	want := oracleRequest(service, batch)
	if _, err := proto.Marshal(want); err != nil {
		if !strings.Contains(err.Error(), "UTF-8") {
			t.Fatalf("the converter's request does not marshal: %v", err)
		}
		want = proto.Clone(want).(*coltracepb.ExportTraceServiceRequest)
		validMessageUTF8(want.ProtoReflect())
	}
	b := newWireEncoder(service).encode(nil, batch)
	var got coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatalf("the encoded request does not unmarshal: %v", err)
	}
	if !proto.Equal(&got, want) {
		t.Fatalf("the encoded request differs from the converter's\n got: %s\nwant: %s",
			protojson.Format(&got), protojson.Format(want))
	}
}

// validMessageUTF8 replaces invalid UTF-8 in every string of m, as
// strings.ToValidUTF8 does.
func validMessageUTF8(m protoreflect.Message) {
	var fields []protoreflect.FieldDescriptor
	m.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		fields = append(fields, fd)
		return true
	})
	for _, fd := range fields {
		v := m.Get(fd)
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				switch fd.Kind() {
				case protoreflect.MessageKind:
					validMessageUTF8(l.Get(i).Message())
				case protoreflect.StringKind:
					l.Set(i, protoreflect.ValueOfString(strings.ToValidUTF8(l.Get(i).String(), "\uFFFD")))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			validMessageUTF8(v.Message())
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString(strings.ToValidUTF8(v.String(), "\uFFFD")))
		}
	}
}

// wireRoutes are routes of every kind the encoder names spans and sets
// attributes for.
func wireRoutes(t testing.TB) []*Route {
	tel := newTestTelemetry(t, Config{})
	return []*Route{
		tel.Route(RouteInfo{Name: "nlu", Upstream: "nlu-svc", Listener: "grpc", GRPC: true}, []string{"gateway"}),
		tel.Route(RouteInfo{Name: "dm", Upstream: "dm-svc", Listener: "http", HTTPRoute: "/dm"}, nil),
		tel.Route(RouteInfo{Name: "llm", Upstream: "model", Listener: "http", HTTPRoute: "/v1", GenAI: GenAIAPIOpenAI}, nil),
		tel.Route(RouteInfo{Name: "ルート ✓", Upstream: "", Listener: "h"}, nil),
	}
}

var (
	wireTraceID = trace.TraceID{0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c}
	wireSpanID  = trace.SpanID{0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31}
	wireParent  = trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}
	wireT0      = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
)

// TestWireMatchesConverter: each kind of hop span, alone and in a batch,
// encodes to what the converter built.
func TestWireMatchesConverter(t *testing.T) {
	routes := wireRoutes(t)
	state, err := trace.ParseTraceState("vendor=opaque,other=x")
	if err != nil {
		t.Fatal(err)
	}
	link := trace.NewSpanContext(trace.SpanContextConfig{TraceID: wireTraceID, SpanID: wireParent, TraceFlags: trace.FlagsSampled, Remote: true})
	base := func(r *Route) hopSpan {
		return hopSpan{r: r, traceID: wireTraceID, spanID: wireSpanID, flags: trace.FlagsSampled,
			caller: "gateway", method: "/bot.v1.NLU/Parse", start: wireT0, end: wireT0.Add(3 * time.Millisecond),
			code: "OK", outcome: OutcomeOK}
	}
	retry := exportEvent{name: "retry", time: wireT0.Add(time.Millisecond), attrs: []attribute.KeyValue{
		attribute.Int("hopwatch.attempt", 2), attribute.String("hopwatch.reason", "unavailable")}}
	cases := []struct {
		name string
		edit func(s *hopSpan)
	}{
		{"grpc server span", func(*hopSpan) {}},
		{"grpc client span", func(s *hopSpan) { s.client, s.endpoint, s.attempt, s.parent = true, "127.0.0.1:50051", 1, wireParent }},
		{"client span without a port", func(s *hopSpan) { s.client, s.endpoint, s.attempt = true, "upstream.local", 3 }},
		{"client span on IPv6", func(s *hopSpan) { s.client, s.endpoint = true, "[::1]:8080" }},
		{"http span", func(s *hopSpan) { s.r, s.method, s.code = routes[1], "POST", "200" }},
		{"gRPC method on an http route", func(s *hopSpan) { s.r = routes[1] }},
		{"trusted remote parent and trace state", func(s *hopSpan) { s.parent, s.remoteParent, s.state = wireParent, true, state }},
		{"unsampled flags", func(s *hopSpan) { s.flags = 0 }},
		{"untrusted context as a link", func(s *hopSpan) { s.link = link }},
		{"local link", func(s *hopSpan) { s.link = link.WithRemote(false).WithTraceFlags(0) }},
		{"error status", func(s *hopSpan) { s.code, s.outcome = "UNAVAILABLE", OutcomeError }},
		{"timeout with an http code", func(s *hopSpan) { s.r, s.method, s.code, s.outcome = routes[1], "GET", "504", OutcomeTimeout }},
		{"unknown code", func(s *hopSpan) { s.code = "weird" }},
		{"events", func(s *hopSpan) {
			s.events = []exportEvent{retry, {name: "fallback", time: wireT0.Add(2 * time.Millisecond)}}
		}},
		{"events dropped", func(s *hopSpan) { s.events, s.droppedEvents = []exportEvent{retry}, 7 }},
		{"session", func(s *hopSpan) { s.session = "sess-1" }},
		{"turn attributes held", func(s *hopSpan) {
			s.session = "sess-0"
			s.turn = turnAttrs(TurnMark{SessionID: "sess-1", Index: 4, Outcome: "answered"})
		}},
		{"turn attributes merged on the entry span", func(s *hopSpan) {
			s.session, s.turnMerge = "sess-1", true
			s.turn = turnAttrs(TurnMark{Outcome: "repeated"})
		}},
		{"genai", func(s *hopSpan) {
			s.r, s.method, s.code = routes[2], "POST", "200"
			s.genai = &GenAIUsage{Operation: "chat", RequestModel: "m", ResponseModel: "m-1", Model: "m", Stream: true,
				InputTokens: 12, OutputTokens: 1 << 40, FinishReason: "stop", FinishReasons: []string{"stop", "length"},
				TTFT: 30 * time.Millisecond, Truncated: true}
		}},
		{"unicode names", func(s *hopSpan) { s.r, s.method, s.caller = routes[3], "ÜBER", "呼び出し元 🚀" }},
		{"empty strings", func(s *hopSpan) { s.caller, s.method, s.code, s.outcome = "", "", "", "" }},
		{"zero times", func(s *hopSpan) { s.start, s.end = time.Time{}, time.Unix(0, 1) }},
		{"invalid UTF-8", func(s *hopSpan) { s.session, s.method, s.r = "a\xffb", "GE\xc3T", routes[1] }},
		{"long strings", func(s *hopSpan) {
			s.session = strings.Repeat("s", 200)
			s.events = []exportEvent{{name: strings.Repeat("é", 9000), time: wireT0}}
		}},
		{"every value type", func(s *hopSpan) {
			s.turn = []attribute.KeyValue{
				attribute.Bool("t", true), attribute.Bool("f", false),
				attribute.Int64("min", math.MinInt64), attribute.Int64("max", math.MaxInt64), attribute.Int("zero", 0),
				attribute.Float64("pi", math.Pi), attribute.Float64("nan", math.NaN()), attribute.Float64("inf", math.Inf(-1)),
				attribute.Float64("zerof", 0),
				attribute.StringSlice("ss", []string{"a", "", "ü"}), attribute.StringSlice("empty", nil),
				attribute.Int64Slice("is", []int64{-1, 0, 1 << 62}), attribute.BoolSlice("bs", []bool{true}),
				attribute.Float64Slice("fs", []float64{1.5}), {Key: "invalid"}, attribute.String("", "no key"),
				attribute.String("empty", ""),
			}
		}},
	}
	var batch []*hopSpan
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := base(routes[0])
			tc.edit(&s)
			batch = append(batch, &s)
			checkWire(t, "hopwatch", []*hopSpan{&s})
		})
	}
	t.Run("all in one batch", func(t *testing.T) { checkWire(t, "bot ✓", batch) })
	t.Run("empty batch", func(t *testing.T) { checkWire(t, "", nil) })
}

// TestWireRandomSpans: random batches of random spans (ids, kinds,
// flags, links, events, attributes of every type, turn attributes,
// unicode, invalid, empty and long strings, extreme numbers) encode to
// what the converter built.
func TestWireRandomSpans(t *testing.T) {
	routes := wireRoutes(t)
	n := 2000
	if testing.Short() {
		n = 200
	}
	for seed := range uint64(n) {
		rng := rand.New(rand.NewPCG(seed, 13))
		checkWireRandom(t, rng, routes, nil)
		if t.Failed() {
			t.Fatalf("seed %d", seed)
		}
	}
}

// FuzzWireEncoding is TestWireRandomSpans with the fuzzer's seed and
// strings among the random ones.
func FuzzWireEncoding(f *testing.F) {
	f.Add(uint64(1), "gateway", "/bot.v1.NLU/Parse")
	f.Add(uint64(2), "", "\xff\xfe")
	f.Add(uint64(3), "日本語", strings.Repeat("x", 300))
	routes := wireRoutes(f)
	f.Fuzz(func(t *testing.T, seed uint64, a, b string) {
		checkWireRandom(t, rand.New(rand.NewPCG(seed, 13)), routes, []string{a, b})
	})
}

func checkWireRandom(t *testing.T, rng *rand.Rand, routes []*Route, extra []string) {
	t.Helper()
	batch := make([]*hopSpan, rng.IntN(6))
	for i := range batch {
		batch[i] = randomHopSpan(rng, routes, extra)
	}
	checkWire(t, randomString(rng, extra), batch)
}

var randomStrings = []string{"", "a", "gateway", "/bot.v1.NLU/Parse", "POST", "héllo", "日本語", "🚀✓", "a\xffb", "\xc3", "OK", "200", "UNAVAILABLE"}

func randomString(rng *rand.Rand, extra []string) string {
	switch k := rng.IntN(10); {
	case k == 0 && len(extra) > 0:
		return extra[rng.IntN(len(extra))]
	case k == 1:
		// Long enough for every length of a message's length prefix to
		// matter.
		return strings.Repeat(randomStrings[rng.IntN(len(randomStrings))], rng.IntN(20000))
	case k == 2:
		var sb strings.Builder
		for range rng.IntN(40) {
			sb.WriteRune(rune(rng.IntN(0x11000)))
		}
		return sb.String()
	default:
		return randomStrings[rng.IntN(len(randomStrings))]
	}
}

func randomAttrs(rng *rand.Rand, extra []string) []attribute.KeyValue {
	if rng.IntN(3) == 0 {
		return nil
	}
	attrs := make([]attribute.KeyValue, rng.IntN(8))
	for i := range attrs {
		k := randomString(rng, extra)
		var v attribute.Value
		switch rng.IntN(10) {
		case 0:
			v = attribute.BoolValue(rng.IntN(2) == 0)
		case 1:
			v = attribute.Int64Value(int64(rng.Uint64()))
		case 2:
			v = attribute.Float64Value([]float64{math.Float64frombits(rng.Uint64()), 0, -1.5, math.NaN(), math.Inf(1)}[rng.IntN(5)])
		case 3:
			ss := make([]string, rng.IntN(4))
			for j := range ss {
				ss[j] = randomString(rng, extra)
			}
			v = attribute.StringSliceValue(ss)
		case 4:
			is := make([]int64, rng.IntN(4))
			for j := range is {
				is[j] = int64(rng.Uint64())
			}
			v = attribute.Int64SliceValue(is)
		case 5:
			v = attribute.BoolSliceValue([]bool{rng.IntN(2) == 0})
		case 6:
			v = attribute.Float64SliceValue([]float64{rng.NormFloat64()})
		case 7: // an invalid (zero) value
		default:
			v = attribute.StringValue(randomString(rng, extra))
		}
		attrs[i] = attribute.KeyValue{Key: attribute.Key(k), Value: v}
	}
	return attrs
}

var randomCodes = []string{"OK", "UNAVAILABLE", "Unavailable", "DEADLINE_EXCEEDED", "200", "404", "503", "", "x", "99999999999"}
var randomOutcomes = []Outcome{OutcomeOK, OutcomeError, OutcomeTimeout, OutcomeCanceled, "", "weird"}

func randomHopSpan(rng *rand.Rand, routes []*Route, extra []string) *hopSpan {
	s := getHopSpan()
	s.r = routes[rng.IntN(len(routes))]
	s.client = rng.IntN(2) == 0
	fill := func(b []byte) {
		if rng.IntN(8) == 0 {
			return // zero: invalid
		}
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
	fill(s.traceID[:])
	fill(s.spanID[:])
	if rng.IntN(2) == 0 {
		fill(s.parent[:])
	}
	s.flags = trace.TraceFlags(rng.Uint32())
	if rng.IntN(3) == 0 {
		if ts, err := trace.ParseTraceState("k" + strings.Repeat("x", rng.IntN(5)) + "=v,other@vendor=1"); err == nil {
			s.state = ts
		}
	}
	s.remoteParent = rng.IntN(2) == 0
	if rng.IntN(3) == 0 {
		var tid trace.TraceID
		var sid trace.SpanID
		fill(tid[:])
		fill(sid[:])
		s.link = trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid,
			TraceFlags: trace.TraceFlags(rng.Uint32()), Remote: rng.IntN(2) == 0})
	}
	s.caller = randomString(rng, extra)
	switch rng.IntN(3) {
	case 0:
		s.method = "/" + randomString(rng, extra) + "/" + randomString(rng, extra)
	case 1:
		s.method = []string{"GET", "POST", "other"}[rng.IntN(3)]
	default:
		s.method = randomString(rng, extra)
	}
	s.endpoint = []string{"127.0.0.1:50051", "[::1]:8080", "host", "host:http", "h:-1", randomString(rng, extra)}[rng.IntN(6)]
	s.attempt = rng.IntN(1 << 20)
	if rng.IntN(2) == 0 {
		s.session = randomString(rng, extra)
	}
	s.start = time.Unix(0, rng.Int64N(1<<62))
	s.end = s.start.Add(time.Duration(rng.Int64N(int64(time.Hour))))
	if rng.IntN(10) == 0 {
		s.start = time.Time{}
	}
	s.code = randomCodes[rng.IntN(len(randomCodes))]
	s.outcome = randomOutcomes[rng.IntN(len(randomOutcomes))]
	if rng.IntN(4) == 0 {
		s.genai = &GenAIUsage{Operation: randomString(rng, extra), RequestModel: randomString(rng, extra),
			ResponseModel: randomString(rng, extra), InputTokens: rng.Int64N(1 << 40), OutputTokens: rng.Int64N(3) - 1,
			FinishReasons: []string{randomString(rng, extra)}, Stream: rng.IntN(2) == 0, Estimated: rng.IntN(2) == 0,
			TTFT: time.Duration(rng.Int64N(1e9)), Truncated: rng.IntN(2) == 0, ParseError: randomString(rng, extra),
			Replayed: rng.IntN(2) == 0}
	}
	for range rng.IntN(4) {
		s.addEvent(randomString(rng, extra), time.Unix(0, rng.Int64N(1<<62)), randomAttrs(rng, extra))
	}
	s.droppedEvents = rng.IntN(3)
	s.turn = randomAttrs(rng, extra)
	s.turnMerge = rng.IntN(2) == 0
	return s
}

// TestCloseMessage: a message's length prefix is right for lengths
// that need one to four bytes, each side of every boundary.
func TestCloseMessage(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 129, 16383, 16384, 16385, 1<<21 - 1, 1 << 21} {
		b, at := openMessage([]byte{0xee}, 7)
		b = append(b, strings.Repeat("z", n)...)
		b = closeMessage(b, at)
		if b[0] != 0xee {
			t.Fatalf("%d bytes: the preceding byte was overwritten", n)
		}
		num, typ, k := protowire.ConsumeTag(b[1:])
		v, m := protowire.ConsumeBytes(b[1+k:])
		if num != 7 || typ != protowire.BytesType || m < 0 || len(v) != n || 1+k+m != len(b) || strings.Trim(string(v), "z") != "" {
			t.Fatalf("%d bytes: field %d type %d, %d bytes read of %d", n, num, typ, len(v), len(b))
		}
	}
}

// TestWireStrings: what appendStringValue writes is the concatenation,
// made valid UTF-8.
func TestWireStrings(t *testing.T) {
	cases := []struct{ name, s1, s2, s3, want string }{
		{"one", "abc", "", "", "abc"},
		{"three", "POST", " ", "dm", "POST dm"},
		{"unicode", "ü", "", "🚀", "ü🚀"},
		{"invalid", "a\xff", " ", "\xfeb", "a\uFFFD \uFFFDb"},
		{"empty", "", "", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := appendStringValue(nil, tc.s1, tc.s2, tc.s3)
			v, n := protowire.ConsumeBytes(b)
			if n != len(b) || string(v) != tc.want || !utf8.Valid(v) {
				t.Errorf("%q, want %q", v, tc.want)
			}
		})
	}
}

// BenchmarkExportEncode is the export goroutine's work for one batch of
// 512 spans (a gRPC hop and its attempt, 256 times) before the upload:
// the converter's messages marshalled by proto.Marshal (the exporter's
// way before otlpwire.go, as the OTLP client marshalled them), and the
// wire encoder. ns/op and allocs/op are per batch.
func BenchmarkExportEncode(b *testing.B) {
	routes := wireRoutes(b)
	batch := make([]*hopSpan, 0, 512)
	for range 256 {
		batch = append(batch,
			&hopSpan{r: routes[0], traceID: wireTraceID, spanID: wireSpanID, parent: wireParent, flags: trace.FlagsSampled,
				caller: "gateway", method: "/bot.v1.NLU/Parse", start: wireT0, end: wireT0.Add(3 * time.Millisecond),
				code: "OK", outcome: OutcomeOK},
			&hopSpan{r: routes[0], client: true, traceID: wireTraceID, spanID: wireParent, flags: trace.FlagsSampled,
				caller: "gateway", method: "/bot.v1.NLU/Parse", endpoint: "127.0.0.1:50051", attempt: 1,
				start: wireT0, end: wireT0.Add(2 * time.Millisecond), code: "OK", outcome: OutcomeOK})
	}
	b.Run("converter+proto.Marshal", func(b *testing.B) {
		var c converter
		req := oracleRequest("hopwatch", nil)
		res, scope := req.ResourceSpans[0].Resource, req.ResourceSpans[0].ScopeSpans[0].Scope
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			req.ResourceSpans = c.resourceSpans(res, scope, batch)
			var err error
			if buf, err = (proto.MarshalOptions{}).MarshalAppend(buf[:0], req); err != nil {
				b.Fatal(err)
			}
			c.reset()
		}
		b.ReportMetric(float64(len(buf)), "bytes")
	})
	b.Run("wire", func(b *testing.B) {
		e := newWireEncoder("hopwatch")
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			buf = e.encode(buf[:0], batch)
		}
		b.ReportMetric(float64(len(buf)), "bytes")
	})
}
