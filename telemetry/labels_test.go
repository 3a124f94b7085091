package telemetry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc/codes"
)

func TestMethodLabel(t *testing.T) {
	long := "/pkg.Svc/" + strings.Repeat("M", MaxMethodLabelLen)
	atCap := "/pkg.Svc/" + strings.Repeat("M", MaxMethodLabelLen-len("/pkg.Svc/"))
	cases := []struct {
		name, in string
		grpc     bool
		want     string
	}{
		{"grpc method", "/bot.v1.NLU/Parse", true, "/bot.v1.NLU/Parse"},
		{"service without package", "/Echo/Unary", true, "/Echo/Unary"},
		{"underscores and digits", "/a_1.b2.C_3/D4_e", true, "/a_1.b2.C_3/D4_e"},
		{"at the length cap", atCap, true, atCap},
		{"over the length cap", long, true, "other"},
		{"no leading slash", "bot.v1.NLU/Parse", true, "other"},
		{"no method", "/bot.v1.NLU/", true, "other"},
		{"no service", "//Parse", true, "other"},
		{"three parts", "/a/b/c", true, "other"},
		{"empty package part", "/bot..NLU/Parse", true, "other"},
		{"identifier starting with a digit", "/bot.1v.NLU/Parse", true, "other"},
		{"dot in the method", "/bot.NLU/Pa.rse", true, "other"},
		{"space", "/bot.NLU/Pa rse", true, "other"},
		{"non-ASCII", "/bot.NLU/Pärse", true, "other"},
		{"control byte", "/bot.NLU/Pa\x00rse", true, "other"},
		{"empty on grpc", "", true, "other"},
		{"http method", "POST", false, "POST"},
		{"every registered http method", "PATCH", false, "PATCH"},
		{"unknown http method", "PROPFIND", false, "OTHER"},
		{"long http method", strings.Repeat("X", 10000), false, "OTHER"},
		{"grpc over h2c on an http listener", "/bot.v1.NLU/Parse", false, "/bot.v1.NLU/Parse"},
		{"any url path over h2c", "/kb/search/" + strings.Repeat("x", 5000), false, "other"},
		{"url path shaped like a method but long", long, false, "other"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := methodLabel(tc.in, tc.grpc); got != tc.want {
				t.Fatalf("methodLabel(%.40q, %v) = %q, want %q", tc.in, tc.grpc, got, tc.want)
			}
		})
	}
	var sink string
	if n := testing.AllocsPerRun(100, func() { sink = methodLabel("/bot.v1.NLU/Parse", true) + methodLabel("GET", false)[:0] }); n != 0 {
		t.Errorf("methodLabel allocates %v times", n)
	}
	_ = sink
}

func TestCodeLabel(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"no response", "", ""},
		{"grpc code", "Unavailable", "Unavailable"},
		{"grpc OK", "OK", "OK"},
		{"undefined grpc number", codes.Code(99).String(), "Unknown"},
		{"huge grpc number", codes.Code(1 << 31).String(), "Unknown"},
		{"http status", "503", "503"},
		{"lowest http status", "100", "100"},
		{"highest http status", "599", "599"},
		{"http status above 599", "600", "other"},
		{"http status below 100", "099", "other"},
		{"text", "teapot", "other"},
		{"long text", strings.Repeat("9", 1000), "other"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := codeLabel(tc.in); got != tc.want {
				t.Fatalf("codeLabel(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
	for _, st := range []int{0, 42, 99, 600, 999, 1 << 20, -1} {
		if got := HTTPCode(st); got != otherCode {
			t.Errorf("HTTPCode(%d) = %q, want %q", st, got, otherCode)
		}
	}
	if got := HTTPCode(204); got != "204" {
		t.Errorf("HTTPCode(204) = %q", got)
	}
	if o := GRPCOutcome(codes.Code(99), false); o != OutcomeError {
		t.Errorf("GRPCOutcome(Code(99)) = %q, want error (it is Unknown)", o)
	}
}

// TestLabelsBounded: hostile method names and status numbers, on a gRPC
// route and on an HTTP route (gRPC over h2c names the method by its URL
// path there), leave /metrics, span names and stored spans bounded.
func TestLabelsBounded(t *testing.T) {
	tel := newTestTelemetry(t, Config{})
	routes := []*Route{
		tel.Route(RouteInfo{Name: "nlu", Upstream: "nlu", Listener: "grpc", GRPC: true}, []string{"gateway"}),
		tel.Route(RouteInfo{Name: "web", Upstream: "web", Listener: "http", HTTPRoute: "/"}, []string{"gateway"}),
	}
	// 2 × 300 names of 1–64 KiB: valid-looking but long, malformed, and
	// (last) 50 short valid ones, which the per-route cap of 64 keeps.
	var names []string
	for i := range 300 {
		pad := strings.Repeat("x", 1<<10+i*200)
		switch i % 3 {
		case 0:
			names = append(names, fmt.Sprintf("/pkg.Svc/M%d%s", i, pad))
		case 1:
			names = append(names, fmt.Sprintf("/%d/%s?q=%d", i, pad, i))
		case 2:
			names = append(names, fmt.Sprintf("not a method %d %s", i, pad))
		}
	}
	for i := range 50 {
		names = append(names, fmt.Sprintf("/pkg.Svc/M%d", i))
	}
	codesIn := []string{codes.Code(99).String(), codes.Code(12345).String(), "999", "1000", "OK", "200", "x"}
	var longest int
	for _, r := range routes {
		for i, name := range names {
			_, h := r.Start(context.Background(), propagation.HeaderCarrier(http.Header{}), "gateway", name)
			longest = max(longest, len(spanName(r, h.method)))
			_, a := h.Attempt(context.Background(), "127.0.0.1:1")
			code := codesIn[i%len(codesIn)]
			a.End(code, OutcomeOK)
			h.End(code, OutcomeOK)
		}
	}
	if longest > MaxMethodLabelLen+len(" web") {
		t.Errorf("longest span name %d bytes, want at most %d", longest, MaxMethodLabelLen+len(" web"))
	}

	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	// 2 routes × ≤ 65 methods × ≤ 4 codes, a few hundred bytes per series
	// and a duration histogram for each: well under 1 MiB. Unbounded, the
	// names alone would be 2 × 350 × ~30 KiB ≈ 21 MiB per series family.
	const maxBody = 1 << 20
	t.Logf("/metrics: %d bytes after %d hostile names per route", len(body), len(names))
	if len(body) > maxBody {
		t.Fatalf("/metrics is %d bytes, want at most %d", len(body), maxBody)
	}
	for _, bad := range []string{"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "Code(", `code="999"`, `code="1000"`, "not a method"} {
		if strings.Contains(string(body), bad) {
			t.Errorf("/metrics contains %q", bad)
		}
	}
	for _, want := range []string{`code="Unknown"`, `code="other"`, `method="other"`, `method="OTHER"`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, sum := range tel.Store.Traces(TraceQuery{Limit: 1000}) {
		d, _ := tel.Store.Trace(sum.TraceID)
		for _, sp := range d.Spans {
			if len(sp.Method) > MaxMethodLabelLen || len(sp.Code) > 11 {
				t.Fatalf("stored span with method %.40q… (%d bytes), code %q", sp.Method, len(sp.Method), sp.Code)
			}
		}
	}
}
