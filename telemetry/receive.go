package telemetry

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// The OTLP receiver: the services' own spans, for the waterfall.
//
// With telemetry.receive.otlp the admin address accepts OTLP trace
// exports, over HTTP (POST /v1/traces, protobuf or JSON, gzip or not) and
// over gRPC (opentelemetry.proto.collector.trace.v1.TraceService/Export,
// HTTP/2 without TLS on the same port). A service (or a collector) that
// sends its spans there fills the gaps between hopwatch's hops: the
// gateway's own processing, a database call inside the dialog manager.
//
// What it keeps is what the waterfall draws: IDs, parent, service.name,
// span name, times and whether the status was an error. Attributes,
// events and links are dropped unread: they may carry request content,
// which the store never holds. The spans go into the trace store as
// KindService (Store.AddService): only for traces hopwatch has seen,
// within a share of its byte bound, never into hop metrics, hop
// statistics or the bottleneck analysis.
//
// It is bounded: one export is at most ReceiveMaxBytes on the wire and
// after decompression, at most receiveConcurrency exports are decoded at
// once (others get 503 / UNAVAILABLE, which OTLP exporters retry), and a
// malformed export is refused whole (HTTP 400 / INVALID_ARGUMENT) with
// the reason, storing nothing.

// ReceiveMaxBytes bounds one OTLP export request body (after gzip
// decompression too): the OTLP/gRPC default message size.
const ReceiveMaxBytes = 4 << 20

// receiveConcurrency bounds the exports decoded at once, and so the
// memory decoding can take: each holds a body and its decoded spans.
const receiveConcurrency = 4

// Limits on the strings kept per span.
const (
	maxReceivedName    = 128
	maxReceivedService = 64
)

// OTLP paths.
const (
	OTLPTracesPath = "/v1/traces"
	OTLPGRPCPath   = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
)

// errMalformed marks an export that is not valid OTLP.
var errMalformed = errors.New("malformed OTLP export")

// Receiver is the OTLP trace receiver; it is an http.Handler for both
// OTLPTracesPath (OTLP/HTTP) and OTLPGRPCPath (OTLP/gRPC, over HTTP/2).
type Receiver struct {
	store *Store
	sem   chan struct{}
	grpc  *grpc.Server
	// spans counts received spans by result: stored, refused (unknown
	// trace, or over the store's bounds for service spans), rejected (in
	// a malformed export).
	stored, refused, rejected prometheus.Counter
}

// NewReceiver returns a receiver that stores into store and counts into
// reg (hopwatch_received_spans_total).
func NewReceiver(store *Store, reg prometheus.Registerer) (*Receiver, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "hopwatch_received_spans_total",
		Help: "Spans received from services over OTLP (telemetry.receive.otlp), by result: stored, refused (trace unknown to hopwatch, or the store's bound for service spans reached), rejected (malformed export).",
	}, []string{"result"})
	if err := reg.Register(c); err != nil {
		return nil, fmt.Errorf("telemetry: receiver: %w", err)
	}
	r := &Receiver{
		store:    store,
		sem:      make(chan struct{}, receiveConcurrency),
		stored:   c.WithLabelValues("stored"),
		refused:  c.WithLabelValues("refused"),
		rejected: c.WithLabelValues("rejected"),
	}
	r.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(ReceiveMaxBytes),
		grpc.MaxConcurrentStreams(2*receiveConcurrency),
	)
	coltracepb.RegisterTraceServiceServer(r.grpc, grpcReceiver{r: r})
	return r, nil
}

// Close stops the gRPC side; exports in flight end with UNAVAILABLE.
func (r *Receiver) Close() { r.grpc.Stop() }

// ServeHTTP serves an OTLP/HTTP or an OTLP/gRPC export.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.ProtoMajor == 2 && strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc") {
		// The slot is taken before grpc-go reads and decodes the message
		// (up to ReceiveMaxBytes): taken in Export it would bound only
		// the storing, not the decoding, and grpc-go's stream limit does
		// not apply under ServeHTTP (each request is a transport of its
		// own), so exports on many connections would decode at once.
		if !r.acquire() {
			h := w.Header()
			h.Set("Content-Type", "application/grpc")
			h.Set("Grpc-Status", strconv.Itoa(int(codes.Unavailable)))
			h.Set("Grpc-Message", "hopwatch OTLP receiver: busy, retry later")
			w.WriteHeader(http.StatusOK) // trailers-only gRPC response
			return
		}
		defer r.release()
		r.grpc.ServeHTTP(w, req)
		return
	}
	r.serveOTLPHTTP(w, req)
}

// acquire takes a decoding slot, or reports that none is free.
func (r *Receiver) acquire() bool {
	select {
	case r.sem <- struct{}{}:
		return true
	default:
		return false
	}
}

func (r *Receiver) release() { <-r.sem }

// serveOTLPHTTP is OTLP/HTTP (https://opentelemetry.io/docs/specs/otlp/#otlphttp):
// a protobuf or JSON ExportTraceServiceRequest, answered in kind.
func (r *Receiver) serveOTLPHTTP(w http.ResponseWriter, req *http.Request) {
	ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type"))
	isJSON := ct == "application/json"
	if ct != "application/x-protobuf" && !isJSON {
		writeOTLPError(w, false, http.StatusUnsupportedMediaType, codes.InvalidArgument,
			fmt.Sprintf("hopwatch OTLP receiver: Content-Type %q: want application/x-protobuf or application/json", ct))
		return
	}
	if !r.acquire() {
		// Retryable (OTLP/HTTP: 503 with Retry-After).
		w.Header().Set("Retry-After", "1")
		writeOTLPError(w, isJSON, http.StatusServiceUnavailable, codes.Unavailable, "hopwatch OTLP receiver: busy, retry later")
		return
	}
	defer r.release()
	body, status, err := readExport(w, req)
	if err != nil {
		writeOTLPError(w, isJSON, status, codes.InvalidArgument, "hopwatch OTLP receiver: "+err.Error())
		return
	}
	var exp coltracepb.ExportTraceServiceRequest
	if isJSON {
		err = unmarshalOTLPJSON(body, &exp)
	} else if err = proto.Unmarshal(body, &exp); err != nil {
		err = fmt.Errorf("%w: %v", errMalformed, err)
	}
	var res *coltracepb.ExportTraceServiceResponse
	if err == nil {
		res, err = r.export(&exp)
	}
	if err != nil {
		writeOTLPError(w, isJSON, http.StatusBadRequest, codes.InvalidArgument, "hopwatch OTLP receiver: "+err.Error())
		return
	}
	var out []byte
	if isJSON {
		out, _ = json.Marshal(otlpJSONResponse(res))
		w.Header().Set("Content-Type", "application/json")
	} else {
		out, _ = proto.Marshal(res)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}
	w.WriteHeader(http.StatusOK)
	w.Write(out)
}

// readExport reads the request body, gunzipping it if need be, within
// ReceiveMaxBytes both ways.
func readExport(w http.ResponseWriter, req *http.Request) ([]byte, int, error) {
	var src io.Reader = http.MaxBytesReader(w, req.Body, ReceiveMaxBytes)
	switch enc := req.Header.Get("Content-Encoding"); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(src)
		if err != nil {
			return nil, readStatus(err), fmt.Errorf("%w: gzip: %v", errMalformed, err)
		}
		defer zr.Close()
		src = zr
	default:
		return nil, http.StatusUnsupportedMediaType, fmt.Errorf("Content-Encoding %q: want gzip or none", enc)
	}
	body, err := io.ReadAll(io.LimitReader(src, ReceiveMaxBytes+1))
	if err != nil {
		return nil, readStatus(err), fmt.Errorf("reading the export: %w", err)
	}
	if len(body) > ReceiveMaxBytes {
		return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("export over %d bytes once decompressed: send smaller batches", ReceiveMaxBytes)
	}
	return body, 0, nil
}

func readStatus(err error) int {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusBadRequest
}

// writeOTLPError answers an OTLP/HTTP export with an error: a
// google.rpc.Status, as the OTLP/HTTP specification asks, in protobuf or
// JSON as the request was.
func writeOTLPError(w http.ResponseWriter, isJSON bool, httpStatus int, code codes.Code, msg string) {
	st := status.New(code, msg).Proto()
	if isJSON {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(httpStatus)
		json.NewEncoder(w).Encode(map[string]any{"code": int(code), "message": msg})
		return
	}
	b, _ := proto.Marshal(st)
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(httpStatus)
	w.Write(b)
}

// grpcReceiver is the OTLP/gRPC TraceService. The embedded
// Unimplemented server is what generated code requires; Export, its one
// method, is implemented.
type grpcReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

// Export runs under the decoding slot ServeHTTP took for its request.
func (g grpcReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	res, err := g.r.export(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, "hopwatch OTLP receiver: "+err.Error())
	}
	return res, nil
}

// export checks the whole export, then stores its spans. A malformed span
// anywhere refuses the export and stores nothing.
func (r *Receiver) export(req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	var spans []Span
	n := 0
	for i, rs := range req.GetResourceSpans() {
		service := "unknown_service"
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = clip(kv.GetValue().GetStringValue(), maxReceivedService)
			}
		}
		for j, ss := range rs.GetScopeSpans() {
			for k, s := range ss.GetSpans() {
				n++
				sp, err := fromOTLP(s, service)
				if err != nil {
					r.rejected.Add(float64(countSpans(req)))
					return nil, fmt.Errorf("%w: resource_spans[%d].scope_spans[%d].spans[%d]: %v", errMalformed, i, j, k, err)
				}
				spans = append(spans, sp)
			}
		}
	}
	refused := 0
	for _, sp := range spans {
		if r.store.AddService(sp) {
			r.stored.Inc()
		} else {
			refused++
			r.refused.Inc()
		}
	}
	res := &coltracepb.ExportTraceServiceResponse{}
	if refused > 0 {
		// OTLP partial success: the sender must not retry these.
		res.PartialSuccess = &coltracepb.ExportTracePartialSuccess{
			RejectedSpans: int64(refused),
			ErrorMessage: fmt.Sprintf("hopwatch kept %d of %d spans: it keeps services' spans only for traces whose hops it has seen, "+
				"at most %d per trace, within a quarter of its trace store's bytes", n-refused, n, MaxServiceSpansPerTrace),
		}
	}
	return res, nil
}

func countSpans(req *coltracepb.ExportTraceServiceRequest) int {
	n := 0
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += len(ss.GetSpans())
		}
	}
	return n
}

// fromOTLP converts and checks one span.
func fromOTLP(s *tracepb.Span, service string) (Span, error) {
	var sp Span
	if len(s.GetTraceId()) != len(sp.TraceID) {
		return sp, fmt.Errorf("trace_id is %d bytes, want 16", len(s.GetTraceId()))
	}
	if len(s.GetSpanId()) != len(sp.SpanID) {
		return sp, fmt.Errorf("span_id is %d bytes, want 8", len(s.GetSpanId()))
	}
	if p := s.GetParentSpanId(); len(p) != 0 && len(p) != len(sp.ParentID) {
		return sp, fmt.Errorf("parent_span_id is %d bytes, want 8 or none", len(p))
	}
	copy(sp.TraceID[:], s.GetTraceId())
	copy(sp.SpanID[:], s.GetSpanId())
	copy(sp.ParentID[:], s.GetParentSpanId())
	if !sp.TraceID.IsValid() || !sp.SpanID.IsValid() {
		return sp, errors.New("all-zero trace_id or span_id")
	}
	start, end := s.GetStartTimeUnixNano(), s.GetEndTimeUnixNano()
	if start == 0 || end < start || end > math.MaxInt64 || end-start > uint64(maxReceivedDuration) {
		return sp, fmt.Errorf("start_time_unix_nano %d, end_time_unix_nano %d: want a start, an end not before it, both before 2262 and at most %v apart",
			start, end, maxReceivedDuration)
	}
	sp.Kind = KindService
	sp.Service = service
	sp.Name = clip(s.GetName(), maxReceivedName)
	sp.Start = time.Unix(0, int64(start)).UTC()
	sp.Duration = time.Duration(end - start)
	sp.Outcome = OutcomeOK
	if s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
		sp.Outcome = OutcomeError
	}
	return sp, nil
}

// maxReceivedDuration bounds a received span's duration: larger ones are
// a broken or hostile exporter's, and would overflow time arithmetic.
const maxReceivedDuration = 24 * time.Hour

// clip cuts s to at most n bytes of valid UTF-8, copied so that the
// stored span does not pin the decoded request.
func clip(s string, n int) string {
	if len(s) > n {
		s = s[:n]
		for len(s) > 0 && !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return strings.Clone(strings.ToValidUTF8(s, "\uFFFD"))
}

// OTLP/JSON (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding)
// is the protobuf JSON mapping except that trace and span IDs are hex, not
// base64. Only the fields the receiver keeps are read.
type otlpJSONRequest struct {
	ResourceSpans []struct {
		Resource struct {
			Attributes []struct {
				Key   string `json:"key"`
				Value struct {
					StringValue string `json:"stringValue"`
				} `json:"value"`
			} `json:"attributes"`
		} `json:"resource"`
		ScopeSpans []struct {
			Spans []struct {
				TraceID           string   `json:"traceId"`
				SpanID            string   `json:"spanId"`
				ParentSpanID      string   `json:"parentSpanId"`
				Name              string   `json:"name"`
				StartTimeUnixNano jsonUint `json:"startTimeUnixNano"`
				EndTimeUnixNano   jsonUint `json:"endTimeUnixNano"`
				Status            struct {
					Code int32 `json:"code"`
				} `json:"status"`
			} `json:"spans"`
		} `json:"scopeSpans"`
	} `json:"resourceSpans"`
}

// jsonUint is a uint64 written as a JSON string (the protobuf mapping) or
// a number.
type jsonUint uint64

func (u *jsonUint) UnmarshalJSON(b []byte) error {
	s := string(bytes.Trim(b, `"`))
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return fmt.Errorf("want an unsigned integer, got %s", b)
	}
	*u = jsonUint(v)
	return nil
}

// unmarshalOTLPJSON decodes an OTLP/JSON export into its protobuf form.
func unmarshalOTLPJSON(body []byte, out *coltracepb.ExportTraceServiceRequest) error {
	var in otlpJSONRequest
	if err := json.Unmarshal(body, &in); err != nil {
		return fmt.Errorf("%w: JSON: %v", errMalformed, err)
	}
	for i, rs := range in.ResourceSpans {
		prs := &tracepb.ResourceSpans{}
		var service string
		for _, a := range rs.Resource.Attributes {
			if a.Key == "service.name" {
				service = a.Value.StringValue
			}
		}
		if service != "" {
			prs.Resource = resourceNamed(service)
		}
		for j, ss := range rs.ScopeSpans {
			pss := &tracepb.ScopeSpans{}
			for k, s := range ss.Spans {
				ids := [3][]byte{}
				for n, h := range []string{s.TraceID, s.SpanID, s.ParentSpanID} {
					b, err := hex.DecodeString(h)
					if err != nil {
						return fmt.Errorf("%w: resourceSpans[%d].scopeSpans[%d].spans[%d]: IDs are hex: %v", errMalformed, i, j, k, err)
					}
					ids[n] = b
				}
				pss.Spans = append(pss.Spans, &tracepb.Span{
					TraceId: ids[0], SpanId: ids[1], ParentSpanId: ids[2], Name: s.Name,
					StartTimeUnixNano: uint64(s.StartTimeUnixNano), EndTimeUnixNano: uint64(s.EndTimeUnixNano),
					Status: &tracepb.Status{Code: tracepb.Status_StatusCode(s.Status.Code)},
				})
			}
			prs.ScopeSpans = append(prs.ScopeSpans, pss)
		}
		out.ResourceSpans = append(out.ResourceSpans, prs)
	}
	return nil
}

func otlpJSONResponse(res *coltracepb.ExportTraceServiceResponse) any {
	if p := res.GetPartialSuccess(); p != nil {
		return map[string]any{"partialSuccess": map[string]any{
			"rejectedSpans": strconv.FormatInt(p.GetRejectedSpans(), 10), "errorMessage": p.GetErrorMessage()}}
	}
	return map[string]any{}
}

func resourceNamed(service string) *resourcepb.Resource {
	return &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{
		Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: service}},
	}}}
}
