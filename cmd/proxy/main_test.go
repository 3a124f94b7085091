package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hopwatch/hopwatch/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// stack is a real gRPC health server and an HTTP server to proxy to.
type stack struct {
	grpcAddr string
	health   *health.Server
	web      *httptest.Server
	// slept counts the web requests with a sleep parameter that arrived.
	slept atomic.Int64
}

func startStack(t testing.TB) *stack {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	t.Cleanup(func() { hs.Shutdown(); srv.Stop() })
	s := &stack{grpcAddr: ln.Addr().String(), health: hs}
	s.web = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
			s.slept.Add(1)
			time.Sleep(d)
		}
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	}))
	t.Cleanup(s.web.Close)
	return s
}

type ports struct{ admin, grpc, http, extra int }

func newPorts(t testing.TB) ports {
	return ports{testkit.FreePort(t), testkit.FreePort(t), testkit.FreePort(t), testkit.FreePort(t)}
}

// configText renders a configuration. variant "a" and "b" are valid and
// differ in routes, timeouts and listeners; "bad" has several errors.
func configText(s *stack, p ports, variant string) string {
	base := fmt.Sprintf(`admin: {address: "127.0.0.1:%d"}
callers: [client]
listeners:
  - {name: grpc, address: "127.0.0.1:%d", protocol: grpc, caller: client}
  - {name: http, address: "127.0.0.1:%d", protocol: http}
`, p.admin, p.grpc, p.http)
	ups := fmt.Sprintf(`upstreams:
  - {name: health, protocol: grpc, endpoints: ["%s"]}
  - {name: web, protocol: http, endpoints: ["%s"], balance: round_robin}
`, s.grpcAddr, s.web.Listener.Addr())
	switch variant {
	case "a":
		return base + ups + `routes:
  - {name: health, listener: grpc, match: {grpc_service: grpc.health.v1.Health}, upstream: health}
  - {name: web, listener: http, match: {path_prefix: /}, upstream: web, timeout: 5s}
`
	case "b":
		return base + fmt.Sprintf("  - {name: extra, address: \"127.0.0.1:%d\", protocol: http}\n", p.extra) + ups + `routes:
  - {name: health-b, listener: grpc, match: {grpc_method: /grpc.health.v1.Health/Check}, upstream: health, timeout: 3s}
  - {name: health-watch, listener: grpc, match: {grpc_service: grpc.health.v1.Health}, upstream: health}
  - {name: web-b, listener: http, match: {path_prefix: /}, upstream: web}
  - {name: extra, listener: extra, upstream: web}
`
	default:
		return base + ups + `routes:
  - {name: health, listener: grpc, match: {grpc_service: grpc.health.v1.Health}, upstream: nowhere}
  - {name: web, listener: http, match: {path_prefix: /}, upstream: web, timeout: 5x}
`
	}
}

func writeFile(t testing.TB, path, text string) {
	t.Helper()
	// Write then rename, as editors and config management do, so a reader
	// never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestCheck(t *testing.T) {
	s := startStack(t)
	p := newPorts(t)
	dir := t.TempDir()
	cases := []struct {
		name       string
		variant    string
		wantCode   int
		wantOutput []string
	}{
		{"valid file", "a", 0, []string{"ok"}},
		{"every error listed with file:line and path", "bad", 1, []string{
			"hopwatch.yaml:10:", "routes[0].upstream", `unknown upstream "nowhere"`,
			"hopwatch.yaml:11:", "routes[1].timeout", "5x",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "hopwatch.yaml")
			writeFile(t, path, configText(s, p, tc.variant))
			var out, errOut bytes.Buffer
			code := run([]string{"-check", "-config", path}, &out, &errOut, nil)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.wantCode, errOut.String())
			}
			all := out.String() + errOut.String()
			for _, w := range tc.wantOutput {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		var out, errOut bytes.Buffer
		if code := run([]string{"-check", "-config", filepath.Join(dir, "nope.yaml")}, &out, &errOut, nil); code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
	})
}

// traffic runs unary and streaming gRPC calls and HTTP requests through the
// proxy until stop is closed, counting failures.
type traffic struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
}

func (tr *traffic) fail(format string, args ...any) {
	tr.failed.Add(1)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.errs) < 10 {
		tr.errs = append(tr.errs, fmt.Sprintf(format, args...))
	}
}

func (tr *traffic) run(t *testing.T, stop <-chan struct{}, p ports, wg *sync.WaitGroup) {
	cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", p.grpc), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	hc := healthpb.NewHealthClient(cc)
	httpc := &http.Client{Transport: &http.Transport{}}
	var clients sync.WaitGroup
	loop := func(call func() error) {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := call(); err != nil {
					tr.fail("%v", err)
				} else {
					tr.ok.Add(1)
				}
			}
		}()
	}
	for range 2 {
		loop(func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		})
		loop(func() error {
			// A server stream: Watch sends the current status at once.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		})
		loop(func() error {
			resp, err := httpc.Get(fmt.Sprintf("http://127.0.0.1:%d/turn", p.http))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 || string(b) != "hello /turn" {
				return fmt.Errorf("http: %d %q", resp.StatusCode, b)
			}
			return nil
		})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		clients.Wait()
		cc.Close()
		httpc.CloseIdleConnections()
	}()
}

func TestReloadUnderTraffic(t *testing.T) {
	s := startStack(t)
	p := newPorts(t)
	path := filepath.Join(t.TempDir(), "hopwatch.yaml")
	writeFile(t, path, configText(s, p, "a"))
	a, err := start(path, 5*time.Second, testkit.Logger(t), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer a.drain(5 * time.Second)

	// A stream opened before the first reload must live through all of them.
	cc, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", p.grpc), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	watch, err := healthpb.NewHealthClient(cc).Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}

	var tr traffic
	stop := make(chan struct{})
	var wg sync.WaitGroup
	tr.run(t, stop, p, &wg)

	variants := []string{"b", "bad", "a", "bad"}
	for i := range 50 {
		v := variants[i%len(variants)]
		writeFile(t, path, configText(s, p, v))
		a.reload("test")
		a.mu.Lock()
		ok, errs := a.last.OK, a.last.Errors
		a.mu.Unlock()
		if want := v != "bad"; ok != want {
			t.Fatalf("reload %d (%s): ok=%v, want %v: %v", i, v, ok, want, errs)
		}
		if v == "bad" && (len(errs) < 2 || !strings.Contains(strings.Join(errs, "\n"), "hopwatch.yaml:")) {
			t.Fatalf("reload %d: invalid file reported as %v, want every error with its line", i, errs)
		}
		// Let traffic run on this configuration before the next swap, so
		// that calls straddle every reload.
		before := tr.ok.Load() + tr.failed.Load()
		testkit.WaitFor(t, "traffic between reloads", func() bool { return tr.ok.Load()+tr.failed.Load() >= before+20 })
		// Keep the stream busy across the swap.
		s.health.SetServingStatus("", healthpb.HealthCheckResponse_ServingStatus(2-i%2)) // alternates, starting from SERVING
		if _, err := watch.Recv(); err != nil {
			t.Fatalf("long-lived stream broke at reload %d: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	if tr.failed.Load() > 0 {
		t.Fatalf("%d of %d calls failed during reloads: %v", tr.failed.Load(), tr.ok.Load()+tr.failed.Load(), tr.errs)
	}
	if tr.ok.Load() < 50 {
		t.Fatalf("only %d calls ran; the test did not exercise anything", tr.ok.Load())
	}
	t.Logf("%d calls, 0 failed, across 50 reloads", tr.ok.Load())
}

func getJSON(t testing.TB, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		json.NewDecoder(resp.Body).Decode(v)
	}
	return resp.StatusCode
}

// TestRunSignalsAndDrain drives the whole command: file-change reload, an
// invalid file shown at /config, SIGHUP, and SIGTERM with a call in flight.
func TestRunSignalsAndDrain(t *testing.T) {
	s := startStack(t)
	p := newPorts(t)
	path := filepath.Join(t.TempDir(), "hopwatch.yaml")
	writeFile(t, path, configText(s, p, "a"))
	sig := make(chan os.Signal, 1)
	exit := make(chan int, 1)
	var stderr bytes.Buffer
	logs := &lockedWriter{w: &stderr}
	go func() {
		exit <- run([]string{"-config", path, "-grace", "10s"}, io.Discard, logs, sig)
	}()
	adminURL := fmt.Sprintf("http://127.0.0.1:%d", p.admin)
	testkit.WaitFor(t, "ready", func() bool {
		resp, err := http.Get(adminURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	type doc struct {
		Config struct {
			Routes []struct{ Name string } `json:"routes"`
		} `json:"config"`
		LastReload reloadResult `json:"last_reload"`
	}
	routeNames := func(d doc) string {
		var n []string
		for _, r := range d.Config.Routes {
			n = append(n, r.Name)
		}
		return strings.Join(n, ",")
	}
	// waitConfig polls /config until cond holds; on timeout it says what
	// it saw last and what the proxy logged, so a failure names its cause
	// (a reload refused, and why) instead of only "timed out".
	waitConfig := func(what string, cond func(doc) bool) {
		t.Helper()
		var last doc
		deadline := time.Now().Add(15 * time.Second)
		for {
			var d doc
			getJSON(t, adminURL+"/config", &d)
			if cond(d) {
				return
			}
			last = d
			if time.Now().After(deadline) {
				logs.mu.Lock()
				out := stderr.String()
				logs.mu.Unlock()
				t.Fatalf("timed out waiting for %s: /config shows routes %q, last reload %+v\nproxy log:\n%s", what, routeNames(last), last.LastReload, out)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	// File change: picked up by the watcher.
	writeFile(t, path, configText(s, p, "b"))
	waitConfig("file reload", func(d doc) bool {
		return routeNames(d) == "health-b,health-watch,web-b,extra" && d.LastReload.OK && d.LastReload.Trigger == "file"
	})
	// The listener the reload added serves.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/x", p.extra))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// An invalid file: old config keeps serving, /config shows the error.
	writeFile(t, path, configText(s, p, "bad"))
	waitConfig("invalid file reported", func(d doc) bool {
		return !d.LastReload.OK && routeNames(d) == "health-b,health-watch,web-b,extra"
	})

	// SIGHUP after fixing the file.
	os.WriteFile(path+".x", nil, 0o644) // unrelated file in the directory: ignored
	writeFile(t, path, configText(s, p, "a"))
	sig <- syscall.SIGHUP
	waitConfig("sighup reload", func(d doc) bool {
		return routeNames(d) == "health,web" && d.LastReload.OK
	})
	// The listener the reload removed no longer accepts.
	testkit.WaitFor(t, "extra listener closed", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.extra))
		if err != nil {
			return true
		}
		c.Close()
		return false
	})

	// SIGTERM with a slow call in flight: the call completes, readiness
	// turns 503 meanwhile, and run returns 0.
	slow := make(chan error, 1)
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/slow?sleep=1500ms", p.http))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "hello /slow" {
				err = fmt.Errorf("got %q", b)
			}
		}
		slow <- err
	}()
	// SIGTERM once the call is in flight: sent before it reaches the
	// proxy, it would find the listener closed (a fixed pause here was
	// too short on a loaded machine).
	testkit.WaitFor(t, "the slow call to reach the upstream", func() bool { return s.slept.Load() == 1 })
	sig <- syscall.SIGTERM
	testkit.WaitFor(t, "readyz 503 while draining", func() bool {
		resp, err := http.Get(adminURL + "/readyz")
		if err != nil {
			return true // already stopped: drain finished first
		}
		resp.Body.Close()
		return resp.StatusCode == 503
	})
	if err := <-slow; err != nil {
		t.Fatalf("in-flight call during drain: %v", err)
	}
	select {
	case code := <-exit:
		if code != 0 {
			t.Fatalf("exit %d, want 0; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after SIGTERM")
	}
	http.DefaultClient.CloseIdleConnections()
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestCPUProfile: -cpuprofile writes a profile that pprof can read once
// the process has stopped; a path that cannot be created is an error
// before anything starts.
func TestCPUProfile(t *testing.T) {
	s := startStack(t)
	p := newPorts(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "hopwatch.yaml")
	writeFile(t, path, configText(s, p, "a"))

	var errOut bytes.Buffer
	if code := run([]string{"-config", path, "-cpuprofile", filepath.Join(dir, "no", "such", "dir", "cpu.pprof")}, io.Discard, &errOut, nil); code != 1 || !strings.Contains(errOut.String(), "-cpuprofile") {
		t.Fatalf("unwritable profile: exit %d, stderr %q", code, errOut.String())
	}

	prof := filepath.Join(dir, "cpu.pprof")
	sig := make(chan os.Signal, 1)
	exit := make(chan int, 1)
	go func() {
		exit <- run([]string{"-config", path, "-cpuprofile", prof, "-grace", "1s"}, io.Discard, io.Discard, sig)
	}()
	testkit.WaitFor(t, "ready", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", p.admin))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	sig <- syscall.SIGTERM
	if code := <-exit; code != 0 {
		t.Fatalf("exit %d", code)
	}
	f, err := os.Open(prof)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A pprof profile is a gzipped protobuf; StopCPUProfile at exit is
	// what completes the stream.
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("profile is not gzip: %v", err)
	}
	if b, err := io.ReadAll(zr); err != nil || len(b) == 0 {
		t.Fatalf("profile: %d bytes, %v", len(b), err)
	}
}
