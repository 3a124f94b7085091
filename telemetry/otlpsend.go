package telemetry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// A spanSender uploads encoded ExportTraceServiceRequests (otlpwire.go).
// The OTLP/gRPC and OTLP/HTTP senders send the bytes as they are, as the
// OTLP exporters' own clients did after marshalling: the same method or
// path, content type, user agent, timeout, no retries (the queue, not a
// retry, absorbs a collector's hiccup) and a partial success is an error.
// clientSender hands them to an otlptrace.Client, decoded.
type spanSender interface {
	// send uploads req within ctx. It releases req once, when it no
	// longer needs it; the transport may hold it a little longer.
	send(ctx context.Context, req *wireBuf) error
	// stop releases the sender's connections; nothing is sent after it.
	stop(ctx context.Context) error
}

// otlpUserAgent is what the OTLP exporters' clients sent: collectors and
// proxies in front of them see the same traffic as before.
var otlpUserAgent = "OTel OTLP Exporter Go/" + otlptrace.Version()

// maxRequestBytes is the OTLP clients' default bound on one request.
const maxRequestBytes = 64 << 20

// errPartialSuccess is a collector's answer that it rejected spans (or
// has a warning): the upload counts as failed, as it did with the OTLP
// exporters' clients, and its message is logged.
var errPartialSuccess = errors.New("OTLP partial success")

func partialSuccessError(rejected int64, msg string) error {
	if rejected == 0 && msg == "" {
		return nil
	}
	if msg == "" {
		msg = "empty message"
	}
	return fmt.Errorf("%w: %s (%d spans rejected)", errPartialSuccess, msg, rejected)
}

// traceExportMethod is the OTLP/gRPC trace service's method.
const traceExportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// grpcSender is OTLP/gRPC over a ClientConn of its own, made without
// connecting (a collector that is down does not hold up start-up).
type grpcSender struct {
	conn    *grpc.ClientConn
	timeout time.Duration
}

func newGRPCSender(endpoint string, timeout time.Duration) (*grpcSender, error) {
	conn, err := grpc.NewClient(endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUserAgent(otlpUserAgent))
	if err != nil {
		return nil, fmt.Errorf("OTLP/gRPC client for %q: %w", endpoint, err)
	}
	return &grpcSender{conn: conn, timeout: timeout}, nil
}

func (g *grpcSender) send(ctx context.Context, req *wireBuf) error {
	if len(req.b) > maxRequestBytes {
		req.release()
		return fmt.Errorf("request message too large: exceeded %d bytes", maxRequestBytes)
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	out := sendBytes{buf: req}
	var resp recvBytes
	err := g.conn.Invoke(ctx, traceExportMethod, &out, &resp, grpc.ForceCodecV2(wireCodec{}))
	if !out.taken {
		req.release() // not marshalled: grpc-go failed before it took the bytes
	}
	if err != nil {
		return fmt.Errorf("OTLP/gRPC export to %s: %w", g.conn.Target(), err)
	}
	rejected, msg, err := partialSuccess(resp.b)
	if err != nil {
		return fmt.Errorf("OTLP/gRPC export to %s: reading the response: %w", g.conn.Target(), err)
	}
	return partialSuccessError(rejected, msg)
}

func (g *grpcSender) stop(context.Context) error { return g.conn.Close() }

// sendBytes is a request for wireCodec; taken records that grpc-go has
// the buffer (and will release it when written).
type sendBytes struct {
	buf   *wireBuf
	taken bool
}

// recvBytes is a response as received.
type recvBytes struct{ b []byte }

// wireCodec passes encoded requests and responses through, unencoded.
// The request's buffer goes to grpc-go with a reference that it drops
// when the bytes are written, which may be after Invoke returned (a
// collector that answers before it read the request): only then does
// the buffer go back to the pool. Its empty name keeps grpc-go from
// adding a content-subtype: the collector sees application/grpc, as the
// OTLP client sent it.
type wireCodec struct{}

func (wireCodec) Name() string { return "" }

func (wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	s, ok := v.(*sendBytes)
	if !ok {
		return nil, fmt.Errorf("hopwatch: OTLP codec cannot marshal %T", v)
	}
	s.taken = true
	return mem.BufferSlice{mem.NewBuffer(&s.buf.b, s.buf)}, nil
}

func (wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	r, ok := v.(*recvBytes)
	if !ok {
		return fmt.Errorf("hopwatch: OTLP codec cannot unmarshal into %T", v)
	}
	r.b = data.Materialize()
	return nil
}

// httpSender is OTLP/HTTP with protobuf bodies, POSTed to /v1/traces.
type httpSender struct {
	url       string
	client    *http.Client
	transport *http.Transport
	timeout   time.Duration
}

// maxResponseBytes bounds what is read of a collector's answer.
const maxResponseBytes = 64 << 10

func newHTTPSender(endpoint string, timeout time.Duration) *httpSender {
	// The OTLP/HTTP client's transport, one per sender so that stop can
	// close its connections.
	t := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   30 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: 1 * time.Second,
	}
	return &httpSender{
		url:    "http://" + endpoint + "/v1/traces",
		client: &http.Client{Transport: t}, transport: t, timeout: timeout,
	}
}

func (h *httpSender) send(ctx context.Context, req *wireBuf) error {
	defer req.release() // send's own hold; each body has one of its own
	if len(req.b) > maxRequestBytes {
		return fmt.Errorf("request body too large: exceeded %d bytes", maxRequestBytes)
	}
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	body := newWireBody(req)
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, body)
	if err != nil {
		body.Close()
		return fmt.Errorf("OTLP/HTTP export: %w", err)
	}
	// A body that can be read again lets the transport retry a request
	// that a reused connection lost before it was written.
	r.GetBody = func() (io.ReadCloser, error) { return newWireBody(req), nil }
	r.ContentLength = int64(len(req.b))
	r.Header.Set("User-Agent", otlpUserAgent)
	r.Header.Set("Content-Type", "application/x-protobuf")
	resp, err := h.client.Do(r)
	if err != nil {
		return fmt.Errorf("OTLP/HTTP export: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("OTLP/HTTP export to %s: reading the response: %w", h.url, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		msg := strings.TrimSpace(string(data))
		if msg == "" {
			msg = "(empty)"
		}
		return fmt.Errorf("OTLP/HTTP export to %s: %s (body: %s)", h.url, resp.Status, msg)
	}
	if len(data) == 0 {
		return nil
	}
	var rejected int64
	var msg string
	switch resp.Header.Get("Content-Type") {
	case "application/x-protobuf":
		rejected, msg, err = partialSuccess(data)
	case "application/json":
		var pr coltracepb.ExportTraceServiceResponse
		if err = protojson.Unmarshal(data, &pr); err == nil {
			rejected, msg = pr.GetPartialSuccess().GetRejectedSpans(), pr.GetPartialSuccess().GetErrorMessage()
		}
	}
	if err != nil {
		return fmt.Errorf("OTLP/HTTP export to %s: reading the response: %w", h.url, err)
	}
	return partialSuccessError(rejected, msg)
}

func (h *httpSender) stop(context.Context) error {
	h.transport.CloseIdleConnections()
	return nil
}

// wireBody reads a request's bytes for net/http, which may read and close
// it after Do returned: each body holds the buffer until it is closed.
type wireBody struct {
	bytes.Reader
	buf  *wireBuf
	once sync.Once
}

func newWireBody(buf *wireBuf) *wireBody {
	buf.hold()
	w := &wireBody{buf: buf}
	w.Reset(buf.b)
	return w
}

func (w *wireBody) Close() error {
	w.once.Do(func() {
		w.Reset(nil)
		w.buf.release()
	})
	return nil
}

// clientSender hands requests, decoded, to an otlptrace.Client: one given
// in Options.SpanClient, or the OTLP exporter's own when the environment
// configures it beyond what hopwatch's configuration says (sdkEnv).
type clientSender struct {
	client otlptrace.Client
}

func (c clientSender) send(ctx context.Context, req *wireBuf) error {
	var r coltracepb.ExportTraceServiceRequest
	err := proto.Unmarshal(req.b, &r) // copies what it keeps
	req.release()
	if err != nil {
		return fmt.Errorf("OTLP export: decoding the request: %w", err)
	}
	return c.client.UploadTraces(ctx, r.ResourceSpans)
}

func (c clientSender) stop(ctx context.Context) error { return c.client.Stop(ctx) }

// sdkEnv returns the first OTEL_EXPORTER_OTLP_* environment variable set
// that the OTLP exporters' clients honoured beyond hopwatch's own options
// (the endpoint, plaintext, the timeout and no retries override the
// rest): headers, compression, certificates, the HTTP encoding and, for
// OTLP/HTTP, the path an endpoint variable gives. With one of them set
// the exporter's own client is used, so that they keep working; "" when
// none is.
func sdkEnv(protocol string) string {
	names := []string{"HEADERS", "COMPRESSION", "CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"}
	if protocol == "http" {
		names = append(names, "PROTOCOL", "ENDPOINT")
	}
	for _, n := range names {
		for _, v := range []string{"OTEL_EXPORTER_OTLP_" + n, "OTEL_EXPORTER_OTLP_TRACES_" + n} {
			if os.Getenv(v) != "" {
				return v
			}
		}
	}
	return ""
}
