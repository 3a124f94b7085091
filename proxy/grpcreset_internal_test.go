package proxy

import (
	"context"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
)

func TestParseGRPCTimeout(t *testing.T) {
	cases := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1H", time.Hour, true},
		{"2M", 2 * time.Minute, true},
		{"30S", 30 * time.Second, true},
		{"300m", 300 * time.Millisecond, true},
		{"99999999u", 99999999 * time.Microsecond, true},
		{"1n", time.Nanosecond, true},
		{"0m", 0, true},
		{"99999999H", maxGRPCTimeout, true}, // beyond time.Duration: capped
		{"", 0, false},
		{"m", 0, false},
		{"100", 0, false},
		{"123456789S", 0, false}, // more than 8 digits
		{"-1S", 0, false},
		{"+1S", 0, false},
		{"1 S", 0, false},
		{"1s", 0, false},
		{"1.5S", 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := parseGRPCTimeout(tc.in)
			if got != tc.want || ok != tc.ok {
				t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func FuzzParseGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1H", "300m", "99999999n", "", "1", "x1S", "00000000S"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseGRPCTimeout(s)
		if !ok {
			return
		}
		if d < 0 || d > maxGRPCTimeout {
			t.Fatalf("parseGRPCTimeout(%q) = %v", s, d)
		}
		if len(s) < 2 || len(s) > 9 {
			t.Fatalf("parseGRPCTimeout(%q) accepted a value of %d bytes", s, len(s))
		}
	})
}

// TestResetCode: an upstream RST_STREAM maps to the status grpc-go's own
// client would show for it.
func TestResetCode(t *testing.T) {
	past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	future, cancel2 := context.WithTimeout(context.Background(), time.Hour)
	defer cancel2()
	cases := []struct {
		name string
		ctx  context.Context
		code http2.ErrCode
		want codes.Code
	}{
		{"cancel, no deadline", context.Background(), http2.ErrCodeCancel, codes.Canceled},
		{"cancel, deadline ahead", future, http2.ErrCodeCancel, codes.Canceled},
		{"cancel, deadline passed", past, http2.ErrCodeCancel, codes.DeadlineExceeded},
		{"refused stream", context.Background(), http2.ErrCodeRefusedStream, codes.Unavailable},
		{"enhance your calm", context.Background(), http2.ErrCodeEnhanceYourCalm, codes.ResourceExhausted},
		{"flow control", context.Background(), http2.ErrCodeFlowControl, codes.ResourceExhausted},
		{"inadequate security", context.Background(), http2.ErrCodeInadequateSecurity, codes.PermissionDenied},
		{"internal error", context.Background(), http2.ErrCodeInternal, codes.Internal},
		{"protocol error, deadline passed", past, http2.ErrCodeProtocol, codes.Internal},
		{"no error", context.Background(), http2.ErrCodeNo, codes.Internal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := resetCode(tc.ctx, tc.code); got != tc.want {
				t.Errorf("resetCode(%v) = %v, want %v", tc.code, got, tc.want)
			}
		})
	}
}

func TestEncodeGRPCTimeout(t *testing.T) {
	cases := []struct {
		in   time.Duration
		want string
	}{
		{-time.Second, "0n"},
		{0, "0n"},
		{1500 * time.Nanosecond, "1500n"},
		{300 * time.Millisecond, "300000u"},
		{20 * time.Second, "20000000u"},
		{time.Second + 1, "1000001u"}, // rounded up
		{30 * time.Minute, "1800000m"},
		{48 * time.Hour, "172800S"},
		{maxGRPCTimeout, "52560000M"},
	}
	for _, tc := range cases {
		if got := encodeGRPCTimeout(tc.in); got != tc.want {
			t.Errorf("encodeGRPCTimeout(%v) = %q, want %q", tc.in, got, tc.want)
		}
		if d, ok := parseGRPCTimeout(encodeGRPCTimeout(tc.in)); !ok || d < tc.in {
			t.Errorf("encodeGRPCTimeout(%v) reads back as %v, %v: shorter than it was", tc.in, d, ok)
		}
	}
}
