package proxy_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// startSleeper is a grpc-go server whose every call ignores its context
// until the test ends: at the call's deadline grpc-go's server transport
// resets the stream with RST_STREAM CANCEL (its handler never ends it
// first). Methods ending in "AfterHeaders" send response headers first.
func startSleeper(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		if m, _ := grpc.MethodFromServerStream(ss); m == "/test.v1.Sleeper/AfterHeaders" {
			if err := ss.SendHeader(metadata.Pairs("started", "1")); err != nil {
				return err
			}
		}
		<-release
		return nil
	}))
	go srv.Serve(ln)
	t.Cleanup(func() { close(release); srv.Stop() })
	return ln.Addr().String()
}

// grpcOverHTTP2 makes one gRPC call with an empty message as a plain
// HTTP/2 client that keeps no deadline of its own (it sends grpc-timeout
// when timeout is not empty, and waits for whatever the proxy answers), and
// returns the grpc-status of the answer, from its headers (trailers-only)
// or its trailers; err is a broken stream (RST_STREAM from the proxy).
func grpcOverHTTP2(t *testing.T, c *http.Client, url, timeout string) (string, string, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader([]byte{0, 0, 0, 0, 0}))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	if timeout != "" {
		req.Header.Set("Grpc-Timeout", timeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // the test's bound, far beyond the call's
	defer cancel()
	res, err := c.Do(req.WithContext(ctx))
	if err != nil {
		return "", "", err
	}
	defer res.Body.Close()
	if s := res.Header.Get("Grpc-Status"); s != "" {
		return s, res.Header.Get("Grpc-Message"), nil
	}
	if _, err := io.Copy(io.Discard, res.Body); err != nil {
		return "", "", err
	}
	return res.Trailer.Get("Grpc-Status"), res.Trailer.Get("Grpc-Message"), nil
}

// TestGRPCDeadlineOnHTTPListener: gRPC through the HTTP listener ends at
// the client's deadline (grpc-timeout) or the route's with
// DEADLINE_EXCEEDED, as on the gRPC listener, whichever side notices
// first and whether or not the response had begun. It used to surface as
// UNAVAILABLE "bad upstream response: stream error ... CANCEL" (the
// upstream reset the stream at the deadline; grpc-go's interop case
// timeout_on_sleeping_server), or, once headers were out, as a stream
// reset with INTERNAL_ERROR that grpc-go clients show as INTERNAL.
func TestGRPCDeadlineOnHTTPListener(t *testing.T) {
	sleeper := startSleeper(t)
	cases := []struct {
		name, upstream, method, timeout string
		routeTimeout                    time.Duration
	}{
		{"client deadline, h2c upstream resets before headers", routes.UpstreamH2C, "/test.v1.Sleeper/Call", "300m", 0},
		{"client deadline, grpc upstream resets before headers", routes.UpstreamGRPC, "/test.v1.Sleeper/Call", "300m", 0},
		{"client deadline, h2c upstream resets after headers", routes.UpstreamH2C, "/test.v1.Sleeper/AfterHeaders", "300m", 0},
		{"route timeout, after headers", routes.UpstreamH2C, "/test.v1.Sleeper/AfterHeaders", "", 300 * time.Millisecond},
		{"route timeout shorter than the client's", routes.UpstreamH2C, "/test.v1.Sleeper/AfterHeaders", "20S", 300 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := singleRouteSpec(tc.upstream, sleeper)
			spec.Routes[0].Timeout = tc.routeTimeout
			p := startProxy(t, spec)
			c := newHTTPClient(t, "h2c")
			code, msg, err := grpcOverHTTP2(t, c, proxyURL(p, "http")+tc.method, tc.timeout)
			if err != nil {
				t.Fatalf("the call broke instead of ending with a status: %v", err)
			}
			if code != "4" {
				t.Fatalf("grpc-status %q (%q), want 4 (DEADLINE_EXCEEDED)", code, msg)
			}
			t.Logf("grpc-status %s %q", code, msg)
		})
	}
}

// TestGRPCDeadlinePropagatedOnHTTPListener: the upstream of a gRPC call
// on the HTTP listener is told the deadline the proxy holds the call to,
// as grpc-go tells it on the gRPC listener: the client's grpc-timeout or
// the route's timeout, whichever is sooner, less the time spent. It used
// to get the client's header as sent, so a route timeout shorter than the
// client's deadline left the upstream working for nobody.
func TestGRPCDeadlinePropagatedOnHTTPListener(t *testing.T) {
	seen := make(chan string, 1)
	up := startHTTPUpstream(t, "h2c", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("Grpc-Timeout")
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "0")
	}), nil)
	cases := []struct {
		name         string
		timeout      string
		routeTimeout time.Duration
		max          time.Duration // 0: no grpc-timeout upstream
	}{
		{"route timeout shorter than the client's", "20S", 300 * time.Millisecond, 300 * time.Millisecond},
		{"client deadline shorter than the route's", "300m", 20 * time.Second, 300 * time.Millisecond},
		{"client deadline only", "2S", 0, 2 * time.Second},
		{"route timeout only", "", 300 * time.Millisecond, 300 * time.Millisecond},
		{"neither", "", 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spec := singleRouteSpec(routes.UpstreamH2C, hostPort(up))
			spec.Routes[0].Timeout = tc.routeTimeout
			p := startProxy(t, spec)
			c := newHTTPClient(t, "h2c")
			if code, msg, err := grpcOverHTTP2(t, c, proxyURL(p, "http")+"/test.v1.Echo/Unary", tc.timeout); err != nil || code != "0" {
				t.Fatalf("call: %q %q %v", code, msg, err)
			}
			got := <-seen
			if tc.max == 0 {
				if got != "" {
					t.Fatalf("upstream got grpc-timeout %q, want none", got)
				}
				return
			}
			d, ok := proxy.ParseGRPCTimeout(got)
			if !ok || d <= 0 || d > tc.max {
				t.Fatalf("upstream got grpc-timeout %q, want at most %v", got, tc.max)
			}
			t.Logf("upstream got grpc-timeout %s", got)
		})
	}
}
