package telemetry

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// FuzzReceiver feeds arbitrary OTLP/HTTP bodies, protobuf and JSON, to
// the receiver: it answers 200, 400 or 413 and never panics; a 200 answer
// is a valid export response; the store stays within its bound.
func FuzzReceiver(f *testing.F) {
	valid, _ := proto.Marshal(exportOf("gateway", gatewaySpans()...))
	f.Add(valid, false)
	f.Add([]byte(`{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"gw"}}]},"scopeSpans":[{"spans":[`+
		`{"traceId":"ab000000000000000000000000000001","spanId":"0000000000000063","parentSpanId":"0000000000000002","name":"x",`+
		`"startTimeUnixNano":"1800000000010000000","endTimeUnixNano":1800000000020000000,"status":{"code":2}}]}]}]}`), true)
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00}, false)
	f.Add([]byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz"}]}]}]}`), true)

	const maxBytes = 1 << 20
	store := NewStoreLimits(StoreLimits{MaxBytes: maxBytes})
	for _, sp := range (sdkTurn{gwSDK: true}).spans(1) {
		store.Add(sp)
	}
	r, err := NewReceiver(store, prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(r.Close)

	f.Fuzz(func(t *testing.T, body []byte, isJSON bool) {
		req := httptest.NewRequest(http.MethodPost, OTLPTracesPath, bytes.NewReader(body))
		if isJSON {
			req.Header.Set("Content-Type", "application/json")
		} else {
			req.Header.Set("Content-Type", "application/x-protobuf")
		}
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		switch w.Code {
		case http.StatusOK:
			if !isJSON {
				var res coltracepb.ExportTraceServiceResponse
				if err := proto.Unmarshal(w.Body.Bytes(), &res); err != nil {
					t.Fatalf("200 with a body that is not an export response: %v", err)
				}
			}
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			if w.Body.Len() == 0 {
				t.Fatalf("%d without a reason", w.Code)
			}
		default:
			t.Fatalf("status %d: %q", w.Code, w.Body.String())
		}
		if b := store.Bytes(); b > maxBytes {
			t.Fatalf("store at %d bytes, over %d", b, maxBytes)
		}
	})
}
