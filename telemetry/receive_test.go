package telemetry

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// otlpSpan is a service's span as its SDK exports it.
func otlpSpan(tr, id, parent uint64, name string, start, dur time.Duration) *tracepb.Span {
	traceID, spanID := tid(tr), sid(id)
	s := &tracepb.Span{
		TraceId: traceID[:], SpanId: spanID[:], Name: name, Kind: tracepb.Span_SPAN_KIND_SERVER,
		StartTimeUnixNano: uint64(t0.Add(start).UnixNano()), EndTimeUnixNano: uint64(t0.Add(start + dur).UnixNano()),
	}
	if parent != 0 {
		p := sid(parent)
		s.ParentSpanId = p[:]
	}
	return s
}

func exportOf(service string, spans ...*tracepb.Span) *coltracepb.ExportTraceServiceRequest {
	return &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource:   resourceNamed(service),
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans}},
	}}}
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gzipped(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// newTestReceiver is a receiver over a store that holds one turn of trace 1
// (sdkTurn with the gateway traced: its nlu and dm hops' parent is the
// gateway's client span 100).
func newTestReceiver(t testing.TB, l StoreLimits) (*Receiver, *Store, *prometheus.Registry) {
	t.Helper()
	s := NewStoreLimits(l)
	for _, sp := range (sdkTurn{gwSDK: true}).spans(1) {
		s.Add(sp)
	}
	reg := prometheus.NewRegistry()
	r, err := NewReceiver(s, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r, s, reg
}

// The gateway's own spans for trace 1: its server span (parent: the chat
// attempt, span 2), and the client span (100) its nlu and dm calls carry.
func gatewaySpans() []*tracepb.Span {
	return []*tracepb.Span{
		otlpSpan(1, 99, 2, "POST /v1/chat", ms(10), ms(980)),
		otlpSpan(1, 100, 99, "bot.v1.NLU/Parse", ms(90), ms(800)),
	}
}

func TestReceiverHTTP(t *testing.T) {
	valid := marshal(t, exportOf("gateway", gatewaySpans()...))
	badID := exportOf("gateway", otlpSpan(1, 99, 2, "x", 0, ms(1)))
	badID.ResourceSpans[0].ScopeSpans[0].Spans[0].TraceId = []byte{1, 2, 3}
	backwards := exportOf("gateway", otlpSpan(1, 99, 2, "x", ms(5), ms(1)))
	backwards.ResourceSpans[0].ScopeSpans[0].Spans[0].EndTimeUnixNano = 1
	farEnd := exportOf("gateway", otlpSpan(1, 99, 2, "x", ms(5), ms(1)))
	farEnd.ResourceSpans[0].ScopeSpans[0].Spans[0].EndTimeUnixNano = math.MaxUint64
	dayLong := exportOf("gateway", otlpSpan(1, 99, 2, "x", ms(5), 25*time.Hour))
	tr1, s99, s2 := tid(1), sid(99), sid(2)
	jsonBody := fmt.Sprintf(`{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"gateway"}}]},
		"scopeSpans":[{"spans":[{"traceId":%q,"spanId":%q,"parentSpanId":%q,"name":"POST /v1/chat",
		"startTimeUnixNano":"%d","endTimeUnixNano":"%d","status":{"code":2}}]}]}]}`,
		hex.EncodeToString(tr1[:]), hex.EncodeToString(s99[:]), hex.EncodeToString(s2[:]), t0.Add(ms(10)).UnixNano(), t0.Add(ms(990)).UnixNano())

	cases := []struct {
		name        string
		contentType string
		encoding    string
		body        []byte
		wantStatus  int
		wantMsg     string // in the error (a google.rpc.Status or JSON)
		wantStored  int    // service spans in trace 1 afterwards
		wantPartial int64  // rejected spans reported as a partial success
	}{
		{"protobuf", "application/x-protobuf", "", valid, 200, "", 2, 0},
		{"gzip protobuf", "application/x-protobuf", "gzip", gzipped(valid), 200, "", 2, 0},
		{"json", "application/json", "", []byte(jsonBody), 200, "", 1, 0},
		{"a trace hopwatch never saw: partial success", "application/x-protobuf", "",
			marshal(t, exportOf("gateway", otlpSpan(42, 1, 0, "health", 0, ms(1)))), 200, "", 0, 1},
		{"not protobuf", "application/x-protobuf", "", []byte("\xff\xff\xff not a protobuf"), 400, "malformed OTLP export", 0, 0},
		{"a 3-byte trace id", "application/x-protobuf", "", marshal(t, badID), 400, "spans[0]: trace_id is 3 bytes, want 16", 0, 0},
		{"ends before it starts", "application/x-protobuf", "", marshal(t, backwards), 400, "want a start, an end not before it", 0, 0},
		{"ends past 2262 (wraps int64)", "application/x-protobuf", "", marshal(t, farEnd), 400, "before 2262", 0, 0},
		{"longer than a day", "application/x-protobuf", "", marshal(t, dayLong), 400, "at most 24h0m0s apart", 0, 0},
		{"the span id of a hop of the trace: partial success", "application/x-protobuf", "",
			marshal(t, exportOf("gateway", otlpSpan(1, 2, 0, "takeover", 0, ms(1)))), 200, "", 0, 1},
		{"json with base64 ids", "application/json", "", []byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"S/kvNXezTaajzpKdDg5HNg=="}]}]}]}`), 400, "IDs are hex", 0, 0},
		{"broken gzip", "application/x-protobuf", "gzip", []byte("not gzip"), 400, "gzip", 0, 0},
		{"unknown encoding", "application/x-protobuf", "br", valid, 415, "Content-Encoding", 0, 0},
		{"text", "text/plain", "", valid, 415, "want application/x-protobuf or application/json", 0, 0},
		{"body over the limit", "application/x-protobuf", "", make([]byte, ReceiveMaxBytes+1), 413, "", 0, 0},
		{"gzip bomb: small on the wire, over the limit unpacked", "application/x-protobuf", "gzip", gzipped(make([]byte, 2*ReceiveMaxBytes)), 413, "once decompressed", 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, store, reg := newTestReceiver(t, StoreLimits{})
			srv := httptest.NewServer(r)
			defer srv.Close()
			req, _ := http.NewRequest(http.MethodPost, srv.URL+OTLPTracesPath, bytes.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.contentType)
			if tc.encoding != "" {
				req.Header.Set("Content-Encoding", tc.encoding)
			}
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d: %q", res.StatusCode, tc.wantStatus, body)
			}
			if tc.wantStatus != 200 {
				msg := string(body)
				if res.Header.Get("Content-Type") == "application/x-protobuf" {
					var st spb.Status
					if err := proto.Unmarshal(body, &st); err != nil {
						t.Fatalf("error body is not a google.rpc.Status: %v", err)
					}
					msg = st.GetMessage()
				}
				if !strings.Contains(msg, tc.wantMsg) || !strings.HasPrefix(msg, "hopwatch OTLP receiver: ") && !strings.Contains(msg, "hopwatch OTLP receiver: ") {
					t.Errorf("error %q, want it to name the receiver and say %q", msg, tc.wantMsg)
				}
			} else if tc.contentType == "application/x-protobuf" {
				var out coltracepb.ExportTraceServiceResponse
				if err := proto.Unmarshal(body, &out); err != nil {
					t.Fatal(err)
				}
				if got := out.GetPartialSuccess().GetRejectedSpans(); got != tc.wantPartial {
					t.Errorf("partial success rejected %d, want %d (%q)", got, tc.wantPartial, out.GetPartialSuccess().GetErrorMessage())
				}
			}
			d, _ := store.Trace(tid(1))
			stored := 0
			for _, n := range d.Spans {
				if n.Kind == KindService {
					stored++
					if n.Service != "gateway" || n.Name == "" {
						t.Errorf("service span %+v: want service gateway and a name", n.Span)
					}
				}
			}
			if stored != tc.wantStored {
				t.Errorf("%d service spans stored, want %d", stored, tc.wantStored)
			}
			wantRejected := 0.0
			if strings.Contains(tc.wantMsg, "spans[0]") || strings.Contains(tc.wantMsg, "want a start") ||
				strings.Contains(tc.wantMsg, "2262") || strings.Contains(tc.wantMsg, "24h0m0s") {
				wantRejected = 1 // a decodable export with a bad span: all its spans count
			}
			if n := testutil.ToFloat64(counterOf(t, reg, "rejected")); n != wantRejected {
				t.Errorf("hopwatch_received_spans_total{result=rejected} = %v, want %v", n, wantRejected)
			}
		})
	}
}

func counterOf(t testing.TB, reg *prometheus.Registry, result string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "hopwatch_received_spans_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == result {
					c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
					c.Add(m.GetCounter().GetValue())
					return c
				}
			}
		}
	}
	return prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
}

// TestReceivedSpansInTheTree: with the gateway's spans received, the nlu
// and dm hops hang under the gateway's client span by their propagated
// parents, nothing is stitched, and the hops' self times are what they
// were: service spans are not hops.
func TestReceivedSpansInTheTree(t *testing.T) {
	r, store, _ := newTestReceiver(t, StoreLimits{})
	before, _ := store.Trace(tid(1))
	if _, err := r.export(exportOf("gateway", gatewaySpans()...)); err != nil {
		t.Fatal(err)
	}
	d, _ := store.Trace(tid(1))
	byID := map[uint64]SpanNode{}
	for _, n := range d.Spans {
		byID[idOfSpan(n.SpanID)] = n
	}
	parentOf := func(id uint64) uint64 {
		if p := byID[id].Parent; p >= 0 {
			return idOfSpan(d.Spans[p].SpanID)
		}
		return 0
	}
	for _, c := range []struct{ span, parent uint64 }{{99, 2}, {100, 99}, {3, 100}, {5, 100}, {7, 6}} {
		if got := parentOf(c.span); got != c.parent || byID[c.span].Stitched {
			t.Errorf("span %d: parent %d stitched %v, want parent %d, not stitched", c.span, got, byID[c.span].Stitched, c.parent)
		}
	}
	for _, n := range before.Spans {
		if got := byID[idOfSpan(n.SpanID)].SelfTime; got != n.SelfTime {
			t.Errorf("span %d: self time %v with the service's spans, %v without", idOfSpan(n.SpanID), got, n.SelfTime)
		}
	}
	if d.Summary.Root != (HopKey{"client", "chat", "gateway"}) {
		t.Errorf("root %+v", d.Summary.Root)
	}
}

func idOfSpan(id [8]byte) uint64 {
	var n uint64
	for _, b := range id {
		n = n<<8 | uint64(b)
	}
	return n
}

// TestReceiverGRPC exports over OTLP/gRPC, as an SDK's otlptracegrpc
// exporter does, through HTTP/2 without TLS.
func TestReceiverGRPC(t *testing.T) {
	r, store, _ := newTestReceiver(t, StoreLimits{})
	srv := httptest.NewUnstartedServer(r)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	conn, err := grpc.NewClient(strings.TrimPrefix(srv.URL, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := coltracepb.NewTraceServiceClient(conn)
	bad := exportOf("gateway", otlpSpan(1, 99, 2, "x", 0, ms(1)))
	bad.ResourceSpans[0].ScopeSpans[0].Spans[0].SpanId = nil
	cases := []struct {
		name     string
		req      *coltracepb.ExportTraceServiceRequest
		wantCode codes.Code
		wantMsg  string
		busy     bool // every decoding slot taken
	}{
		{"valid", exportOf("gateway", gatewaySpans()...), codes.OK, "", false},
		{"no span id", bad, codes.InvalidArgument, "span_id is 0 bytes, want 8", false},
		{"over the message limit", exportOf("gateway", &tracepb.Span{Name: strings.Repeat("x", ReceiveMaxBytes)}), codes.ResourceExhausted, "larger than max", false},
		// Refused before grpc-go reads the message: had it been decoded
		// first, the size error would show instead.
		{"busy, refused before decoding", exportOf("gateway", &tracepb.Span{Name: strings.Repeat("x", ReceiveMaxBytes)}), codes.Unavailable, "busy", true},
		{"busy, valid", exportOf("gateway", gatewaySpans()...), codes.Unavailable, "busy", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if tc.busy {
				for range cap(r.sem) {
					r.sem <- struct{}{}
				}
				defer func() {
					for range cap(r.sem) {
						<-r.sem
					}
				}()
			}
			_, err := client.Export(ctx, tc.req)
			if st := status.Convert(err); st.Code() != tc.wantCode || !strings.Contains(st.Message(), tc.wantMsg) {
				t.Fatalf("got %v %q, want %v %q", st.Code(), st.Message(), tc.wantCode, tc.wantMsg)
			}
		})
	}
	d, _ := store.Trace(tid(1))
	if d.Summary.Spans != 8+2 {
		t.Errorf("%d spans in the trace, want the turn's 8 and the gateway's 2", d.Summary.Spans)
	}
}

// TestReceiverFloodBounded floods the receiver with services' spans, for
// traces hopwatch has seen and for others: the store stays within its
// byte bound, the services' spans within their quarter of it, no hop
// trace is evicted or loses a span, the bottleneck analysis is unchanged,
// and the heap stays bounded.
func TestReceiverFloodBounded(t *testing.T) {
	const (
		maxBytes = 8 << 20
		turns    = 2000
	)
	s := NewStoreLimits(StoreLimits{MaxBytes: maxBytes})
	for i := range turns {
		for _, sp := range (sdkTurn{off: time.Duration(i) * ms(10), gwSDK: true, dmSDK: true}).spans(uint64(i + 1)) {
			s.Add(sp)
		}
	}
	r, err := NewReceiver(s, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	q := BottleneckQuery{MinDuration: ms(500), Window: time.Hour, Now: t0.Add(time.Minute)}
	before := s.Bottlenecks(q)
	hopBytes := s.Bytes()

	runtime.GC()
	var m0 runtime.MemStats
	runtime.ReadMemStats(&m0)
	id := uint64(1 << 20)
	for batch := range 400 {
		var spans []*tracepb.Span
		for k := range 500 {
			tr := uint64((batch*500+k)%(turns+500) + 1) // every fifth-ish for a trace hopwatch never saw
			id++
			sp := otlpSpan(tr, id, 100, strings.Repeat("n", 200), ms(20), ms(5))
			spans = append(spans, sp)
		}
		if _, err := r.export(exportOf("gateway", spans...)); err != nil {
			t.Fatal(err)
		}
		if b := s.Bytes(); b > maxBytes {
			t.Fatalf("store at %d bytes, over its bound %d", b, maxBytes)
		}
	}
	runtime.GC()
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	svcBytes, refused := s.ServiceSpans()
	t.Logf("hop traces %d bytes; after 200,000 service spans: store %d bytes, service spans %d bytes, %d refused; heap %d → %d",
		hopBytes, s.Bytes(), svcBytes, refused, m0.HeapAlloc, m1.HeapAlloc)
	if svcBytes > maxBytes/serviceBytesShare {
		t.Errorf("service spans hold %d bytes, over their share %d", svcBytes, maxBytes/serviceBytesShare)
	}
	if refused == 0 {
		t.Error("nothing refused: the flood did not reach the bounds")
	}
	if s.Len() != turns {
		t.Errorf("%d traces in the store, want all %d turns kept", s.Len(), turns)
	}
	if grown := int64(m1.HeapAlloc) - int64(m0.HeapAlloc); grown > maxBytes/serviceBytesShare+(1<<20) {
		t.Errorf("heap grew by %d bytes, more than the service spans' share (%d) and 1 MiB", grown, maxBytes/serviceBytesShare)
	}
	after := s.Bottlenecks(q)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("bottlenecks changed by the services' spans:\nbefore %+v\nafter  %+v", before, after)
	}
}

// TestStoreServiceSpansNeverCrowdHops: a trace full of service spans still
// takes every hop span, and service spans alone never start a trace.
func TestStoreServiceSpansNeverCrowdHops(t *testing.T) {
	s := NewStore(10)
	if s.AddService(span(1, 1, 0, KindService, "", "", "", 0, ms(1), OutcomeOK)) {
		t.Fatal("a service span started a trace")
	}
	if s.Len() != 0 {
		t.Fatal("store not empty")
	}
	s.Add(span(1, 1, 0, KindServer, "client", "chat", "gateway", 0, ms(10), OutcomeOK))
	kept := 0
	for i := range MaxServiceSpansPerTrace + 10 {
		if s.AddService(span(1, uint64(1000+i), 1, KindService, "", "", "", ms(1), ms(1), OutcomeOK)) {
			kept++
		}
	}
	for i := range MaxSpansPerTrace - 1 {
		s.Add(span(1, uint64(5000+i), 1, KindClient, "client", "chat", "gateway", ms(1), ms(1), OutcomeOK))
	}
	d, _ := s.Trace(tid(1))
	if kept != MaxServiceSpansPerTrace || d.Summary.DroppedSpans != 0 || d.Summary.Spans != MaxSpansPerTrace+MaxServiceSpansPerTrace {
		t.Fatalf("kept %d service spans, trace has %d spans, %d dropped; want %d, %d, 0",
			kept, d.Summary.Spans, d.Summary.DroppedSpans, MaxServiceSpansPerTrace, MaxSpansPerTrace+MaxServiceSpansPerTrace)
	}
}

// TestStoreServiceSpansGiveWay: in a store at its byte bound, hop traces
// are kept exactly as long as without any service spans: the services'
// spans are refused when there is no room, and dropped (oldest trace
// first) before any trace is evicted when the hops need room.
func TestStoreServiceSpansGiveWay(t *testing.T) {
	limits := StoreLimits{MaxTraces: 100000, MaxBytes: 1 << 20}
	with, without := NewStoreLimits(limits), NewStoreLimits(limits)
	refused := 0
	for i := range 6000 {
		tr := uint64(i + 1)
		for _, sp := range (sdkTurn{off: time.Duration(i) * ms(1), gwSDK: true}).spans(tr) {
			with.Add(sp)
			without.Add(sp)
		}
		for k := range 3 {
			if !with.AddService(span(tr, uint64(1000+k), 2, KindService, "", "", "", ms(10), ms(5), OutcomeOK)) {
				refused++
			}
		}
		if with.Len() != without.Len() {
			t.Fatalf("after turn %d: %d traces kept with service spans, %d without", i+1, with.Len(), without.Len())
		}
		if b := with.Bytes(); b > limits.MaxBytes {
			t.Fatalf("store at %d bytes, over %d", b, limits.MaxBytes)
		}
	}
	_, ev := without.Dropped()
	svcBytes, _ := with.ServiceSpans()
	t.Logf("%d traces kept, %d evicted; service spans: %d bytes held, %d refused", with.Len(), ev, svcBytes, refused)
	if ev == 0 || refused == 0 {
		t.Fatalf("evicted %d traces, refused %d service spans: the test did not reach the byte bound", ev, refused)
	}
	// The estimate still adds up after the drops: each live entry's bytes
	// are its slice, its spans' strings and its index share.
	var sum, svc int64
	for k := with.oldest; k < with.total; k++ {
		e := &with.ring[k%uint64(with.max)]
		b := spanSliceBytes(cap(e.spans)) + indexEntryBytes
		for i := range e.spans {
			b += spanBytes(&e.spans[i])
		}
		if e.svcSpans == 0 && b != e.bytes {
			t.Errorf("trace %d: %d bytes counted, %d held", k, e.bytes, b)
		}
		sum += e.bytes
		svc += e.svcBytes
	}
	if sum != with.bytes || svc != with.svcBytes {
		t.Errorf("entries hold %d bytes (%d of service spans), the store counts %d (%d)", sum, svc, with.bytes, with.svcBytes)
	}
	if len(with.svcTraces) > 2*with.max+1 {
		t.Errorf("queue of traces with service spans at %d entries, over twice the %d slots", len(with.svcTraces), with.max)
	}
}

// TestReceivedSpanStitched: a service sent only some of its spans (its
// server span was sampled out or lost): the client span it did send has a
// parent hopwatch never saw, and is stitched, by its service.name, under
// the attempt that carried the request into that service; the hops below
// it follow their propagated parent.
func TestReceivedSpanStitched(t *testing.T) {
	r, store, _ := newTestReceiver(t, StoreLimits{})
	if _, err := r.export(exportOf("gateway", gatewaySpans()[1])); err != nil { // the client span 100 alone
		t.Fatal(err)
	}
	d, _ := store.Trace(tid(1))
	links := map[uint64]struct {
		parent   uint64
		stitched bool
	}{}
	roots := 0
	for _, n := range d.Spans {
		var p uint64
		if n.Parent >= 0 {
			p = idOfSpan(d.Spans[n.Parent].SpanID)
		} else {
			roots++
		}
		links[idOfSpan(n.SpanID)] = struct {
			parent   uint64
			stitched bool
		}{p, n.Stitched}
	}
	for _, w := range []struct {
		span, parent uint64
		stitched     bool
	}{{100, 2, true}, {3, 100, false}, {5, 100, false}} {
		if got := links[w.span]; got.parent != w.parent || got.stitched != w.stitched {
			t.Errorf("span %d: parent %d stitched %v, want %d %v", w.span, got.parent, got.stitched, w.parent, w.stitched)
		}
	}
	if roots != 1 {
		t.Errorf("%d roots, want 1", roots)
	}
}

// TestMarkTurnLeavesServiceSpans: a turn's marks go on hop spans only, so
// the services' byte share stays what AddService counted.
func TestMarkTurnLeavesServiceSpans(t *testing.T) {
	s := NewStoreLimits(StoreLimits{})
	for _, sp := range (sdkTurn{gwSDK: true}).spans(1) {
		s.Add(sp)
	}
	if !s.AddService(Span{TraceID: tid(1), SpanID: sid(99), ParentID: sid(2), Service: "gateway", Name: "x", Start: t0.Add(ms(10)), Duration: ms(5)}) {
		t.Fatal("service span refused")
	}
	svcBefore, _ := s.ServiceSpans()
	s.markTurn(tid(1), t0.Add(-time.Hour), t0.Add(time.Hour), &SpanTurn{SessionID: "s", Index: 1, Outcome: "good"})
	d, _ := s.Trace(tid(1))
	hops := 0
	for _, n := range d.Spans {
		switch {
		case n.Kind == KindService && n.Turn != nil:
			t.Errorf("service span marked with the turn: %+v", n.Span)
		case n.Kind != KindService && n.Turn == nil:
			t.Errorf("hop span not marked: %+v", n.Span)
		case n.Kind != KindService:
			hops++
		}
	}
	if hops == 0 {
		t.Fatal("no hop span in the trace")
	}
	if svcAfter, _ := s.ServiceSpans(); svcAfter != svcBefore {
		t.Errorf("services' bytes %d after marking, %d before", svcAfter, svcBefore)
	}
}
