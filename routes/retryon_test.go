package routes

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

func TestParseRetryOn(t *testing.T) {
	type check struct {
		grpc    []codes.Code
		noGRPC  []codes.Code
		http    []int
		noHTTP  []int
		connect bool
	}
	for _, tc := range []struct {
		name   string
		tokens []string
		want   check
		err    string
	}{
		{"nothing", nil, check{noGRPC: []codes.Code{codes.Unavailable, codes.OK}, noHTTP: []int{503, 0, -1, 999}}, ""},
		{"grpc codes", []string{"unavailable", "resource_exhausted", "deadline_exceeded", "internal"}, check{
			grpc:   []codes.Code{codes.Unavailable, codes.ResourceExhausted, codes.DeadlineExceeded, codes.Internal},
			noGRPC: []codes.Code{codes.OK, codes.Unknown, codes.Aborted, codes.Code(99)},
			noHTTP: []int{503},
		}, ""},
		{"both spellings of cancelled", []string{"cancelled", "canceled"}, check{grpc: []codes.Code{codes.Canceled}}, ""},
		{"every code but ok", []string{"cancelled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
			"already_exists", "permission_denied", "resource_exhausted", "failed_precondition", "aborted",
			"out_of_range", "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated"}, check{
			grpc: []codes.Code{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, noGRPC: []codes.Code{0, 17},
		}, ""},
		{"statuses", []string{"502", "503", "504", "429"}, check{
			http: []int{429, 502, 503, 504}, noHTTP: []int{500, 501, 505, 200, 428},
		}, ""},
		{"5xx", []string{"5xx"}, check{http: []int{500, 503, 599}, noHTTP: []int{499, 600, 429}}, ""},
		{"connect", []string{RetryConnectFailure}, check{connect: true, noHTTP: []int{503}}, ""},
		{"mixed", []string{"unavailable", "503", "connect-failure"}, check{
			grpc: []codes.Code{codes.Unavailable}, http: []int{503}, connect: true,
		}, ""},

		{"ok", []string{"ok"}, check{}, `"ok": ok is a success`},
		{"4xx", []string{"4xx"}, check{}, `"4xx": retrying every client error`},
		{"2xx status", []string{"200"}, check{}, `"200": HTTP statuses worth retrying are 400..599`},
		{"600", []string{"600"}, check{}, "400..599"},
		{"50x", []string{"50x"}, check{}, "400..599"},
		{"leading zero", []string{"0503"}, check{}, "400..599"},
		{"upper case", []string{"UNAVAILABLE"}, check{}, `"UNAVAILABLE": write unavailable`},
		{"kebab case", []string{"deadline-exceeded"}, check{}, "write deadline_exceeded"},
		{"camel case", []string{"Unavailable"}, check{}, "write unavailable"},
		{"connect_failure", []string{"connect_failure"}, check{}, "write connect-failure"},
		{"upper OK is no hint", []string{"OK"}, check{}, "want a gRPC code"},
		{"empty", []string{""}, check{}, "want a gRPC code"},
		{"unknown", []string{"unavailable", "timeout"}, check{}, `"timeout": want a gRPC code such as unavailable, an HTTP status such as 503 or 5xx, or connect-failure`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			on, err := ParseRetryOn(tc.tokens)
			if tc.err != "" {
				if err == nil || !errors.Is(err, ErrRetryOn) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseRetryOn(%q) error = %v, want ErrRetryOn with %q", tc.tokens, err, tc.err)
				}
				if on != (RetryOn{}) {
					t.Errorf("ParseRetryOn returned conditions along with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRetryOn(%q) = %v", tc.tokens, err)
			}
			for _, c := range tc.want.grpc {
				if !on.GRPC(c) {
					t.Errorf("GRPC(%v) = false", c)
				}
			}
			for _, c := range tc.want.noGRPC {
				if on.GRPC(c) {
					t.Errorf("GRPC(%v) = true", c)
				}
			}
			for _, s := range tc.want.http {
				if !on.HTTP(s) {
					t.Errorf("HTTP(%d) = false", s)
				}
			}
			for _, s := range tc.want.noHTTP {
				if on.HTTP(s) {
					t.Errorf("HTTP(%d) = true", s)
				}
			}
			if on.Connect() != tc.want.connect {
				t.Errorf("Connect() = %v", on.Connect())
			}
		})
	}
}

func TestGRPCCode(t *testing.T) {
	for name, want := range map[string]codes.Code{"ok": codes.OK, "unavailable": codes.Unavailable, "data_loss": codes.DataLoss} {
		if c, ok := GRPCCode(name); !ok || c != want {
			t.Errorf("GRPCCode(%q) = %v, %v", name, c, ok)
		}
	}
	if _, ok := GRPCCode("Unavailable"); ok {
		t.Error(`GRPCCode("Unavailable") found a code`)
	}
	// Every code has a name: the table covers the gRPC spec.
	named := map[codes.Code]bool{}
	for _, c := range grpcCodes {
		named[c] = true
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if !named[c] {
			t.Errorf("code %v has no config name", c)
		}
	}
	for _, tc := range []struct {
		s    FallbackStatic
		code codes.Code
		msg  string
	}{
		{FallbackStatic{}, codes.OK, ""},
		{FallbackStatic{GRPCCode: "ok"}, codes.OK, ""},
		{FallbackStatic{GRPCCode: "unavailable", GRPCMessage: "kb is slow"}, codes.Unavailable, "kb is slow"},
	} {
		if c, m := tc.s.GRPCStatus(); c != tc.code || m != tc.msg {
			t.Errorf("%+v.GRPCStatus() = %v, %q", tc.s, c, m)
		}
	}
}

// FuzzParseRetryOn checks that no token panics the parser, that errors
// wrap ErrRetryOn, and that what parses matches the validator's view.
func FuzzParseRetryOn(f *testing.F) {
	for _, s := range []string{"unavailable", "503", "5xx", "4xx", "connect-failure", "ok", "", "9", "599", "0x1f", "+503", "１"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		on, err := ParseRetryOn([]string{tok})
		if err != nil {
			if !errors.Is(err, ErrRetryOn) {
				t.Fatalf("error %v does not wrap ErrRetryOn", err)
			}
			return
		}
		if on == (RetryOn{}) {
			t.Fatalf("token %q parsed to no condition", tok)
		}
		if on.HTTP(-1) || on.HTTP(1<<20) || on.GRPC(codes.Code(1<<31)) {
			t.Fatal("out-of-range lookups matched")
		}
		s := &Spec{
			Listeners: []Listener{{Name: "l", Address: "127.0.0.1:1", Protocol: ListenerHTTP}},
			Upstreams: []Upstream{{Name: "u", Protocol: UpstreamHTTP, Endpoints: []string{"127.0.0.1:2"}}},
			Routes:    []Route{{Name: "r", Listener: "l", Upstream: "u", Retry: &Retry{Attempts: 2, On: []string{tok}}}},
		}
		if errs := Validate(s); len(errs) > 0 {
			t.Fatalf("token %q parses but does not validate: %v", tok, errs)
		}
	})
}
