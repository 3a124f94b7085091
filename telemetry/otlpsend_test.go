package telemetry

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// answerServer is an OTLP/gRPC receiver that gives every export the same
// answer, and keeps the metadata of the last one.
type answerServer struct {
	coltracepb.UnimplementedTraceServiceServer
	resp *coltracepb.ExportTraceServiceResponse
	err  error

	mu    sync.Mutex
	md    metadata.MD
	spans int
}

func (a *answerServer) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	a.mu.Lock()
	a.md = md
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			a.spans += len(ss.Spans)
		}
	}
	a.mu.Unlock()
	return a.resp, a.err
}

func startAnswerServer(t *testing.T, a *answerServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, a)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// exportOnce runs one gRPC call (two spans) through telemetry exporting to
// endpoint over protocol, and returns the failures and exports counted
// and the log.
func exportOnce(t *testing.T, endpoint, protocol string) (failures, exported float64, log string) {
	t.Helper()
	var buf bytes.Buffer
	clk := &fakeClock{t0}
	tel, err := New(Options{Config: Config{Tracing: Tracing{OTLP: &OTLP{Endpoint: endpoint, Protocol: protocol, Timeout: 5 * time.Second}}},
		Registry: prometheus.NewRegistry(), Now: clk.now, Logger: newTextLogger(&buf)})
	if err != nil {
		t.Fatal(err)
	}
	(&goldenEnv{t: t, tel: tel, clk: clk}).grpcCall()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	return testutil.ToFloat64(tel.m.exportFailures), testutil.ToFloat64(tel.m.spansExported), buf.String()
}

// TestGRPCSenderAnswers: what an OTLP/gRPC collector answers counts as
// the OTLP client counted it: a full success exports the spans; a
// partial success (rejected spans or a message) and an error status are
// failures, logged with what the collector said. The request carries the
// client's user agent and content type.
func TestGRPCSenderAnswers(t *testing.T) {
	cases := []struct {
		name       string
		resp       *coltracepb.ExportTraceServiceResponse
		err        error
		wantFailed bool
		wantLog    string
	}{
		{"success", &coltracepb.ExportTraceServiceResponse{}, nil, false, ""},
		{"empty partial success", &coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{}}, nil, false, ""},
		{"rejected spans", &coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{
			RejectedSpans: 2, ErrorMessage: "spans too old"}}, nil, true, "OTLP partial success: spans too old (2 spans rejected)"},
		{"a warning only", &coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{
			ErrorMessage: "slow down"}}, nil, true, "OTLP partial success: slow down (0 spans rejected)"},
		{"rejected without a message", &coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{
			RejectedSpans: 1}}, nil, true, "OTLP partial success: empty message (1 spans rejected)"},
		{"unavailable", nil, status.Error(codes.Unavailable, "overloaded"), true, "overloaded"},
		{"invalid argument", nil, status.Error(codes.InvalidArgument, "bad request"), true, "InvalidArgument"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := &answerServer{resp: tc.resp, err: tc.err}
			failures, exported, log := exportOnce(t, startAnswerServer(t, a), "grpc")
			if tc.wantFailed != (failures == 1) || tc.wantFailed == (exported == 2) {
				t.Fatalf("%v failures, %v spans exported; want failed %v", failures, exported, tc.wantFailed)
			}
			if !strings.Contains(log, tc.wantLog) {
				t.Errorf("log does not say %q:\n%s", tc.wantLog, log)
			}
			a.mu.Lock()
			defer a.mu.Unlock()
			if a.spans != 2 {
				t.Errorf("the collector received %d spans, want 2", a.spans)
			}
			if ua := strings.Join(a.md.Get("user-agent"), ","); !strings.HasPrefix(ua, otlpUserAgent+" grpc-go/") {
				t.Errorf("user-agent %q, want the OTLP client's", ua)
			}
			if ct := strings.Join(a.md.Get("content-type"), ","); ct != "application/grpc" {
				t.Errorf("content-type %q, want application/grpc", ct)
			}
		})
	}
}

// TestGRPCSenderCollectorDown: with nothing listening an export fails,
// counted and logged, and start-up did not wait for a connection.
func TestGRPCSenderCollectorDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	failures, exported, log := exportOnce(t, addr, "grpc")
	if failures != 1 || exported != 0 || !strings.Contains(log, "OTLP/gRPC export to "+addr) {
		t.Errorf("%v failures, %v exported; log:\n%s", failures, exported, log)
	}
}

// TestHTTPSenderAnswers: an OTLP/HTTP collector's answers count as they
// did with the OTLP client: 2xx is a success unless its body (protobuf
// or JSON) reports a partial success; any other status is a failure,
// logged with the status and the body.
func TestHTTPSenderAnswers(t *testing.T) {
	partial := &coltracepb.ExportTraceServiceResponse{PartialSuccess: &coltracepb.ExportTracePartialSuccess{RejectedSpans: 2, ErrorMessage: "too old"}}
	pb, err := proto.Marshal(partial)
	if err != nil {
		t.Fatal(err)
	}
	js, err := protojson.Marshal(partial)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		status      int
		contentType string
		body        []byte
		wantFailed  bool
		wantLog     string
	}{
		{"success, empty body", 200, "", nil, false, ""},
		{"success, protobuf body", 200, "application/x-protobuf", marshal(t, &coltracepb.ExportTraceServiceResponse{}), false, ""},
		{"accepted, other body", 202, "text/plain", []byte("ok"), false, ""},
		{"partial success in protobuf", 200, "application/x-protobuf", pb, true, "OTLP partial success: too old (2 spans rejected)"},
		{"partial success in JSON", 200, "application/json", js, true, "OTLP partial success: too old (2 spans rejected)"},
		{"unreadable protobuf", 200, "application/x-protobuf", []byte{0xff}, true, "reading the response"},
		{"unavailable", 503, "text/plain", []byte("overloaded\n"), true, "503 Service Unavailable (body: overloaded)"},
		{"bad request, no body", 400, "", nil, true, "400 Bad Request (body: (empty))"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var got []*http.Request
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				var req coltracepb.ExportTraceServiceRequest
				if err := proto.Unmarshal(b, &req); err != nil || len(req.ResourceSpans[0].ScopeSpans[0].Spans) != 2 {
					t.Errorf("the collector got %d bytes it cannot read: %v", len(b), err)
				}
				mu.Lock()
				got = append(got, r)
				mu.Unlock()
				if tc.contentType != "" {
					w.Header().Set("Content-Type", tc.contentType)
				}
				w.WriteHeader(tc.status)
				w.Write(tc.body)
			}))
			defer srv.Close()
			failures, exported, log := exportOnce(t, srv.Listener.Addr().String(), "http")
			if tc.wantFailed != (failures == 1) || tc.wantFailed == (exported == 2) {
				t.Fatalf("%v failures, %v spans exported; want failed %v\n%s", failures, exported, tc.wantFailed, log)
			}
			if !strings.Contains(log, tc.wantLog) {
				t.Errorf("log does not say %q:\n%s", tc.wantLog, log)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 1 {
				t.Fatalf("%d requests, want 1", len(got))
			}
			r := got[0]
			if r.Method != "POST" || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" ||
				r.Header.Get("User-Agent") != otlpUserAgent || r.Header.Get("Content-Encoding") != "" {
				t.Errorf("%s %s, headers %v", r.Method, r.URL.Path, r.Header)
			}
		})
	}
}

// TestSenderTimeout: an export is bounded by tracing.otlp.timeout, with
// either protocol.
func TestSenderTimeout(t *testing.T) {
	// The collectors answer when the client gives up (or the test ends).
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release) // before the servers close: they wait for their handlers
	gs := &answerServer{resp: &coltracepb.ExportTraceServiceResponse{}}
	block := grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return h(ctx, req)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gsrv := grpc.NewServer(block)
	coltracepb.RegisterTraceServiceServer(gsrv, gs)
	go gsrv.Serve(ln)
	defer gsrv.Stop()
	cases := []struct{ name, protocol, endpoint string }{
		{"grpc", "grpc", ln.Addr().String()},
		{"http", "http", srv.Listener.Addr().String()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := newSender(&OTLP{Endpoint: tc.endpoint, Protocol: tc.protocol, Timeout: 50 * time.Millisecond}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.stop(context.Background())
			req := getWireBuf()
			req.b = newWireEncoder("x").encode(req.b[:0], nil)
			err = s.send(context.Background(), req)
			if err == nil || !strings.Contains(err.Error(), "deadline") && !strings.Contains(err.Error(), "DeadlineExceeded") {
				t.Errorf("send: %v, want a deadline error", err)
			}
		})
	}
}

// TestWireBufReleased: once a request is sent (or not), the senders give
// its buffer back, exactly once, whatever the collector answered.
func TestWireBufReleased(t *testing.T) {
	ok := &answerServer{resp: &coltracepb.ExportTraceServiceResponse{}}
	failing := &answerServer{err: status.Error(codes.Unavailable, "down")}
	httpOK := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	defer httpOK.Close()
	httpEarly := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusServiceUnavailable) // before reading the body
	}))
	defer httpEarly.Close()
	cases := []struct{ name, protocol, endpoint string }{
		{"grpc ok", "grpc", startAnswerServer(t, ok)},
		{"grpc failing", "grpc", startAnswerServer(t, failing)},
		{"http ok", "http", httpOK.Listener.Addr().String()},
		{"http answering early", "http", httpEarly.Listener.Addr().String()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := newSender(&OTLP{Endpoint: tc.endpoint, Protocol: tc.protocol, Timeout: 5 * time.Second}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			// Not from the pool: the test watches this buffer alone. It
			// is larger than grpc-go's pooling threshold, so grpc-go
			// gives it back rather than keep it.
			req := &wireBuf{}
			req.refs.Store(1)
			batch := []*hopSpan{{r: wireRoutes(t)[0], session: strings.Repeat("s", 64<<10)}}
			req.b = newWireEncoder("x").encode(nil, batch)
			s.send(context.Background(), req)
			s.stop(context.Background())
			deadline := time.Now().Add(10 * time.Second)
			for req.refs.Load() != 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := req.refs.Load(); n != 0 {
				t.Errorf("%d holders left", n)
			}
		})
	}
}

// TestSDKEnv: the environment variables that only the OTLP exporters'
// clients read make hopwatch use such a client; the ones its own options
// override, or that do not concern the protocol, do not.
func TestSDKEnv(t *testing.T) {
	cases := []struct {
		name, protocol, env, value, want string
	}{
		{"nothing set", "grpc", "", "", ""},
		{"headers", "grpc", "OTEL_EXPORTER_OTLP_HEADERS", "api-key=1", "OTEL_EXPORTER_OTLP_HEADERS"},
		{"trace headers", "http", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=1", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"},
		{"compression", "grpc", "OTEL_EXPORTER_OTLP_COMPRESSION", "gzip", "OTEL_EXPORTER_OTLP_COMPRESSION"},
		{"certificate", "grpc", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/ca.pem", "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"},
		{"client key", "http", "OTEL_EXPORTER_OTLP_CLIENT_KEY", "/key.pem", "OTEL_EXPORTER_OTLP_CLIENT_KEY"},
		{"empty is unset", "grpc", "OTEL_EXPORTER_OTLP_HEADERS", "", ""},
		{"endpoint over gRPC: overridden", "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317", ""},
		{"endpoint over HTTP: its path counts", "http", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/x", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"},
		{"HTTP encoding", "http", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"protocol over gRPC: ignored", "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", ""},
		{"timeout: overridden", "grpc", "OTEL_EXPORTER_OTLP_TIMEOUT", "1000", ""},
		{"insecure: overridden", "http", "OTEL_EXPORTER_OTLP_INSECURE", "false", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv(tc.env, tc.value)
			}
			if got := sdkEnv(tc.protocol); got != tc.want {
				t.Errorf("sdkEnv(%q) = %q, want %q", tc.protocol, got, tc.want)
			}
			s, err := newSender(&OTLP{Endpoint: "127.0.0.1:1", Protocol: tc.protocol}, nil, newTextLogger(io.Discard))
			if err != nil {
				t.Fatal(err)
			}
			defer s.stop(context.Background())
			if _, sdk := s.(clientSender); sdk != (tc.want != "") {
				t.Errorf("sender %T with %s=%q", s, tc.env, tc.value)
			}
		})
	}
}

// TestSDKEnvHeaders: with OTEL_EXPORTER_OTLP_HEADERS set the collector
// gets the headers, as before, through the OTLP client.
func TestSDKEnvHeaders(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret%201")
	a := &answerServer{resp: &coltracepb.ExportTraceServiceResponse{}}
	failures, exported, log := exportOnce(t, startAnswerServer(t, a), "grpc")
	if failures != 0 || exported != 2 {
		t.Fatalf("%v failures, %v exported:\n%s", failures, exported, log)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if got := strings.Join(a.md.Get("api-key"), ","); got != "secret 1" {
		t.Errorf("api-key %q, want %q", got, "secret 1")
	}
}

func newTextLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
