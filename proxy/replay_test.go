package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// TestRequestLogBackPressure: on a gRPC route with a fallback, a client
// that streams far more than the replay limit to an upstream that does not
// read is held back by flow control, as on a plain route, instead of
// being read into the proxy's memory (one stream pushed over 1 GiB in 6 s
// before). The client tries to send 256 MiB; what it manages and what the
// heap grows by must stay within a few windows and the replay limit.
func TestRequestLogBackPressure(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		backend := startEcho(t)
		spec := &routes.Spec{
			Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
			Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo", Fallback: &routes.Fallback{
				After: 100 * time.Millisecond, Use: []string{"static"}, Static: &routes.FallbackStatic{},
			}}},
			Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
		}
		env := startResEnv(t, spec)
		cc := dial(t, env.grpcAddr)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()

		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)

		// The upstream sends its headers and then never reads.
		md := metadata.Pairs("x-block-after-header", "1")
		cs, err := cc.NewStream(metadata.NewOutgoingContext(ctx, md), &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/"+echoService+"/Bidi")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.Header(); err != nil { // the upstream has the call
			t.Fatal(err)
		}
		const msgSize, total = 1 << 20, 256 << 20
		var sent atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			msg := wrapperspb.Bytes(make([]byte, msgSize))
			for sent.Load() < total {
				if err := cs.SendMsg(msg); err != nil {
					return
				}
				sent.Add(msgSize)
			}
		}()
		// Give the sender time to fill whatever will take its data.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && sent.Load() < total {
			time.Sleep(50 * time.Millisecond)
		}
		var during runtime.MemStats
		runtime.ReadMemStats(&during)
		cancel()
		<-done
		<-backend.canceled

		grew := int64(during.HeapInuse) - int64(before.HeapInuse)
		t.Logf("client sent %d MiB; heap in use grew by %d MiB", sent.Load()>>20, grew>>20)
		// HTTP/2 windows (grpc-go grows them up to 16 MiB per connection by
		// BDP estimation) on the client→proxy and proxy→upstream legs, plus
		// the 1 MiB replay limit and a message in flight on each side.
		if sent.Load() > 64<<20 {
			t.Errorf("the client pushed %d MiB into a stream whose upstream reads nothing: no back-pressure", sent.Load()>>20)
		}
		if grew > 128<<20 {
			t.Errorf("heap grew by %d MiB", grew>>20)
		}
		testkit.WaitFor(t, "replay bytes back to 0", func() bool {
			return env.metric(t, "hopwatch_replay_buffer_bytes", nil) == 0
		})
		if n := env.metric(t, "hopwatch_replay_skipped_total", map[string]string{"reason": "too_large"}); n != 1 {
			t.Errorf("replay_skipped_total{reason=too_large} = %v, want 1", n)
		}
	})
}

// TestReplayHTTP covers what the resilient HTTP path buffers, and how it
// bounds it: only declared lengths within the limit, within the proxy-wide
// budget, within the route's deadline, and only after admission.
func TestReplayHTTP(t *testing.T) {
	// The upstream echoes what it got, after holding requests that ask.
	release := make(chan struct{})
	var seen sync.Map // X-Id → true, when the upstream got the request head
	gotStart := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get("X-Id"), true)
		if r.Header.Get("X-Hold") != "" {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		var b []byte
		if r.Header.Get("X-Stream-Start") != "" {
			// Tell the test as soon as the start of the body is here.
			start := make([]byte, 5)
			io.ReadFull(r.Body, start)
			gotStart <- struct{}{}
			b = start
		}
		rest, _ := io.ReadAll(r.Body)
		b = append(b, rest...)
		fmt.Fprintf(w, "got %d bytes", len(b))
	}))
	defer up.Close()
	defer close(release)

	spec := httpSpec(up.Listener.Addr().String(), routes.Route{
		Timeout: 2 * time.Second,
		Fallback: &routes.Fallback{
			After: time.Second, Use: []string{"static"}, Static: &routes.FallbackStatic{Body: "static"},
		}}, routes.Upstream{MaxConcurrent: 2})
	spec.Replay = routes.Replay{MaxBytes: 8 << 10, MaxRequestBytes: 6 << 10}
	env := startResEnv(t, spec)
	url := "http://" + env.httpAddr + "/kb"
	client := &http.Client{}
	defer client.CloseIdleConnections()
	skipped := func(reason string) float64 {
		return env.metric(t, "hopwatch_replay_skipped_total", map[string]string{"reason": reason})
	}

	t.Run("a body of unknown length is streamed, not waited for", func(t *testing.T) {
		// The client sends the start of a chunked body and holds the
		// rest until the upstream has that start: buffering the body
		// for replay would wait for its end, which never comes.
		pr, pw := io.Pipe()
		req, _ := http.NewRequest(http.MethodPost, url, pr)
		req.Header.Set("X-Stream-Start", "1")
		result := make(chan httpResult, 1)
		go func() { result <- do(client, req) }()
		pw.Write([]byte("start"))
		select {
		case <-gotStart:
		case <-time.After(5 * time.Second):
			t.Fatal("the upstream never got the start of the body: the proxy waited for its end")
		}
		pw.Write([]byte(" and the rest"))
		pw.Close()
		if r := <-result; r.status != 200 || r.body != "got 18 bytes" {
			t.Fatalf("%+v", r)
		}
		if n := skipped("unknown_length"); n != 1 {
			t.Errorf("skipped{unknown_length} = %v, want 1", n)
		}
	})

	t.Run("over the per-request limit is streamed", func(t *testing.T) {
		r := post(client, url, strings.Repeat("x", 7<<10))
		if r.status != 200 || r.body != "got 7168 bytes" {
			t.Fatalf("%+v", r)
		}
		if n := skipped("too_large"); n != 1 {
			t.Errorf("skipped{too_large} = %v, want 1", n)
		}
	})

	t.Run("over the proxy-wide budget is streamed", func(t *testing.T) {
		// One held request keeps 5 KiB of the 8 KiB budget.
		held := make(chan httpResult, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(strings.Repeat("h", 5<<10)))
			req.Header.Set("X-Hold", "1")
			req.Header.Set("X-Id", "held")
			held <- do(client, req)
		}()
		testkit.WaitFor(t, "the held request to reach the upstream", func() bool { _, ok := seen.Load("held"); return ok })
		if used := env.metric(t, "hopwatch_replay_buffer_bytes", nil); used != 5<<10 {
			t.Errorf("replay bytes = %v, want %d", used, 5<<10)
		}
		r := post(client, url, strings.Repeat("y", 4<<10))
		if r.status != 200 || r.body != "got 4096 bytes" {
			t.Fatalf("%+v", r)
		}
		if n := skipped("budget"); n != 1 {
			t.Errorf("skipped{budget} = %v, want 1", n)
		}
		release <- struct{}{}
		if r := <-held; r.status != 200 {
			t.Fatalf("held request: %+v", r)
		}
		testkit.WaitFor(t, "replay bytes back to 0", func() bool {
			return env.metric(t, "hopwatch_replay_buffer_bytes", nil) == 0
		})
	})

	t.Run("a trickled body ends at the route timeout with 408", func(t *testing.T) {
		status, elapsed := rawRequest(t, env.httpAddr, "POST /kb HTTP/1.1\r\nHost: kb\r\nX-Id: trickle\r\nContent-Length: 1000\r\n\r\nonly a few bytes")
		if status != http.StatusRequestTimeout {
			t.Fatalf("status %d, want 408", status)
		}
		if _, ok := seen.Load("trickle"); ok {
			t.Error("the upstream got a request whose body never came")
		}
		t.Logf("answered after %v (route timeout 2s)", elapsed.Round(time.Millisecond))
	})

	t.Run("admission comes before the body", func(t *testing.T) {
		// Fill the bulkhead (2) with held requests, then send a request
		// whose body never comes: it is answered by the static fallback
		// at once, without waiting for a body nobody needs.
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("q"))
				req.Header.Set("X-Hold", "1")
				req.Header.Set("X-Id", fmt.Sprint("bulk", i))
				do(client, req)
			}()
		}
		testkit.WaitFor(t, "the bulkhead to fill", func() bool {
			_, a := seen.Load("bulk0")
			_, b := seen.Load("bulk1")
			return a && b
		})
		status, _, body := rawRequestBody(t, env.httpAddr, "POST /kb HTTP/1.1\r\nHost: kb\r\nContent-Length: 1000\r\n\r\n")
		release <- struct{}{}
		release <- struct{}{}
		wg.Wait()
		if status != http.StatusOK || body != "static" {
			t.Fatalf("got %d %q, want the static fallback", status, body)
		}
	})
}

func do(client *http.Client, req *http.Request) httpResult {
	resp, err := client.Do(req)
	if err != nil {
		return httpResult{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{status: resp.StatusCode, body: string(b), fallback: resp.Header.Get("X-Hopwatch-Fallback")}
}

// rawRequest writes raw bytes (a request whose body may never come) and
// reads the status line of the answer.
func rawRequest(t *testing.T, addr, raw string) (int, time.Duration) {
	status, took, _ := rawRequestBody(t, addr, raw)
	return status, took
}

func rawRequestBody(t *testing.T, addr, raw string) (int, time.Duration, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, time.Since(start), string(b)
}

// TestReplayBodyWithoutTimeout: on a resilient route without a written
// timeout, a body that never comes is still given up on (at the
// first-response bound), instead of holding the handler for as long as the
// client keeps the connection.
func TestReplayBodyWithoutTimeout(t *testing.T) {
	var got atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		io.Copy(io.Discard, r.Body)
	}))
	defer up.Close()
	p := proxy.New(proxy.Options{FirstResponseTimeout: 300 * time.Millisecond})
	if err := p.Apply(httpSpec(up.Listener.Addr().String(), routes.Route{Retry: &routes.Retry{Attempts: 2, On: []string{"503"}}}, routes.Upstream{})); err != nil {
		t.Fatal(err)
	}
	defer shutdown(t, p)
	for _, tc := range []struct{ name, raw string }{
		{"no body at all", "POST /kb HTTP/1.1\r\nHost: kb\r\nContent-Length: 1000\r\n\r\n"},
		{"a few bytes, then nothing", "POST /kb HTTP/1.1\r\nHost: kb\r\nContent-Length: 1000\r\n\r\nabc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if status, _ := rawRequest(t, p.Addr("http").String(), tc.raw); status != http.StatusRequestTimeout {
				t.Fatalf("status %d, want 408", status)
			}
		})
	}
	if got.Load() != 0 {
		t.Errorf("the upstream got %d requests whose bodies never came", got.Load())
	}
}
