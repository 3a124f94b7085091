package e2e

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// h2specInstall is how .ci/run (and a developer) gets the pinned h2spec
// (v2.2.1, pinned with its dependencies by tools/h2spec/go.mod).
const h2specInstall = "make e2e-tools (builds bin/tools/h2spec from tools/h2spec)"

// h2specKnownHTTP lists the h2spec cases (section/number, h2spec's own
// numbering) that hopwatch's HTTP listener fails, with why: each is a
// behaviour of Go's HTTP/2 server (net/http's bundled x/net/http2) that
// runs before any hopwatch code sees the request, or of serving HTTP/1.1
// and h2c on one port. A failing case not listed here fails the test, and
// so does a listed case that passes (the list is then stale). The value's
// first word says where it applies: "h2c:" on the cleartext listener only,
// "both:" over h2c and TLS.
var h2specKnownHTTP = map[string]string{
	"http2/3.5/2": "h2c: Sends invalid connection preface. A cleartext listener serves HTTP/1.1 and " +
		"prior-knowledge h2c on one port (RFC 9113 §3.3): bytes that are not the HTTP/2 preface are " +
		"an HTTP/1.1 request, and a bad request line gets 400 (RFC 9112 §3), which h2spec reads as a " +
		"broken frame. Over TLS, ALPN decides, and the case passes.",
	"http2/6.5.3/1": "both: Sends multiple values of SETTINGS_INITIAL_WINDOW_SIZE. Go's HTTP/2 server " +
		"closes a connection whose SETTINGS frame repeats a setting (x/net/http2 server.go " +
		"processSettings, counted as settings_big_or_dups): deliberate hardening, during the " +
		"connection's handshake, before any handler.",
	"http2/8.1.2.2/1": "both: Sends a HEADERS frame that contains the connection-specific header field. " +
		"Go's HTTP/2 server answers 400 Bad Request from its own handler (hopwatch's never runs), which " +
		"RFC 9113 §8.1.1 allows (\"a server MAY send an HTTP response prior to closing or resetting " +
		"the stream\"); h2spec accepts only RST_STREAM or GOAWAY.",
	"http2/8.1.2.2/2": "both: Sends a HEADERS frame that contains the TE header field with any value " +
		"other than \"trailers\". As http2/8.1.2.2/1: Go's server answers 400 itself.",
}

// h2specFloorHTTP is the least number of cases the HTTP listener must
// pass (issue 14).
const h2specFloorHTTP = 140

// TestH2Spec runs h2spec (every case, strict ones excluded, as h2spec does
// by default) against hopwatch's HTTP listener over h2c and over TLS, its
// gRPC listeners (the frame relay, the default, and grpc-go's server with
// relay: messages), and, for comparison in the same run, the plain grpc-go
// server that listener forwards to. The HTTP listener must pass at least
// h2specFloorHTTP cases and fail only those listed in h2specKnownHTTP; the
// gRPC listener must pass at least as many as plain grpc-go, and no case
// that grpc-go passes.
func TestH2Spec(t *testing.T) {
	bin := needProgram(t, h2specInstall, os.Getenv("HOPWATCH_H2SPEC"), "../bin/tools/h2spec", "h2spec")

	// Upstreams: an h2c server answering every request with a small body
	// (h2spec sends GET and POST to /), and a plain grpc-go server.
	web := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "hello from upstream\n")
		}),
		Protocols: new(http.Protocols),
	}
	web.Protocols.SetUnencryptedHTTP2(true)
	web.Protocols.SetHTTP1(true)
	webLn := listen(t)
	go web.Serve(webLn)
	t.Cleanup(func() { web.Close() })

	grpcLn := listen(t)
	plain := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(plain, hs)
	served := make(chan struct{})
	go func() { defer close(served); plain.Serve(grpcLn) }()
	t.Cleanup(func() { hs.Shutdown(); plain.Stop(); <-served })

	dir := t.TempDir()
	ca := testkit.NewCA(t, "h2spec ca")
	kp := ca.Issue(t, testkit.Leaf{CommonName: "localhost", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	tlsConf := &routes.ListenerTLS{
		CertFile: testkit.WriteFile(t, dir, "cert.pem", kp.CertPEM),
		KeyFile:  testkit.WriteFile(t, dir, "key.pem", kp.KeyPEM),
	}

	p := proxy.New(proxy.Options{Logger: testkit.Discard()})
	spec := &routes.Spec{
		Listeners: []routes.Listener{
			{Name: "h2c", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP},
			{Name: "tls", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP, TLS: tlsConf},
			{Name: "grpc", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC, Relay: routes.ListenerRelayMessages},
			{Name: "relay", Address: "127.0.0.1:0", Protocol: routes.ListenerGRPC}, // the default
		},
		Routes: []routes.Route{
			{Name: "h2c", Listener: "h2c", Match: routes.Match{PathPrefix: "/"}, Upstream: "web"},
			{Name: "tls", Listener: "tls", Match: routes.Match{PathPrefix: "/"}, Upstream: "web"},
			{Name: "grpc", Listener: "grpc", Match: routes.Match{GRPCService: "grpc.health.v1.Health"}, Upstream: "plain"},
			{Name: "relay", Listener: "relay", Match: routes.Match{GRPCService: "grpc.health.v1.Health"}, Upstream: "plain"},
		},
		Upstreams: []routes.Upstream{
			{Name: "web", Protocol: routes.UpstreamH2C, Endpoints: []string{webLn.Addr().String()}},
			{Name: "plain", Protocol: routes.UpstreamGRPC, Endpoints: []string{grpcLn.Addr().String()}},
		},
	}
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
	})

	// The four runs at once: most of h2spec's time is spent waiting for
	// answers that do not come (its 2 s timeout).
	targets := []struct {
		name, addr string
		tls        bool
	}{
		{"http h2c", p.Addr("h2c").String(), false},
		{"http tls", p.Addr("tls").String(), true},
		{"grpc-go listener", p.Addr("grpc").String(), false},
		{"plain grpc-go", grpcLn.Addr().String(), false},
		{"relay listener", p.Addr("relay").String(), false},
	}
	results := make([]h2specResult, len(targets))
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, tg := range targets {
		wg.Go(func() { results[i], errs[i] = runH2Spec(bin, tg.name, tg.addr, tg.tls, t.TempDir()) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		t.Logf("h2spec %-16s %d/%d passed, %d skipped; failed: %v", r.name, r.passed(), len(r.cases), r.skipped(), r.failedIDs())
	}
	h2c, tlsRes, grpcRes, plainRes, relayRes := results[0], results[1], results[2], results[3], results[4]

	for _, r := range []h2specResult{h2c, tlsRes} {
		if r.passed() < h2specFloorHTTP {
			t.Errorf("h2spec %s: %d cases passed, want at least %d", r.name, r.passed(), h2specFloorHTTP)
		}
		for _, c := range r.cases {
			why, known := h2specKnownHTTP[c.id]
			known = known && (strings.HasPrefix(why, "both:") || r.name == "http h2c" && strings.HasPrefix(why, "h2c:"))
			switch {
			case c.failed && !known:
				t.Errorf("h2spec %s: case %s (%s) fails and is not a known failure:\n%s", r.name, c.id, c.desc, c.detail)
			case !c.failed && !c.skipped && known:
				t.Errorf("h2spec %s: case %s (%s) passes now: remove it from h2specKnownHTTP", r.name, c.id, c.desc)
			}
		}
	}
	// grpc-go closes a connection right after its GOAWAY when its reader
	// has stopped, so unread client bytes can turn the close into a TCP
	// RST that discards the GOAWAY on its way (grpc-go issue 5358): a few
	// cases fail now and then on either server. A case on which the two
	// differ is run three more times on each (with its section); it counts as passed
	// where any run passed.
	for _, c := range grpcRes.cases {
		pc, ok := plainRes.find(c.id)
		if !ok || c.failed == pc.failed {
			continue
		}
		for range 3 {
			grpcRes.retry(t, bin, c.id, p.Addr("grpc").String())
			plainRes.retry(t, bin, c.id, grpcLn.Addr().String())
		}
	}
	t.Logf("h2spec after re-runs: gRPC listener %d passed, plain grpc-go %d", grpcRes.passed(), plainRes.passed())
	// The frame relay speaks HTTP/2 itself: it is held to the same bar
	// as the grpc-go listener.
	for _, r := range []h2specResult{grpcRes, relayRes} {
		if r.passed() < plainRes.passed() {
			t.Errorf("h2spec: the %s passes %d cases, plain grpc-go %d", r.name, r.passed(), plainRes.passed())
		}
		for _, c := range r.cases {
			if pc, _ := plainRes.find(c.id); c.failed && !pc.failed && !pc.skipped {
				t.Errorf("h2spec: case %s (%s) fails on the %s and passes on plain grpc-go:\n%s", c.id, c.desc, r.name, c.detail)
			}
		}
	}
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// h2specCase is one h2spec test case's result. Its id is h2spec's section
// and the case's number within it, as h2spec prints them
// ("http2/5.1.1/2").
type h2specCase struct {
	id, desc        string
	failed, skipped bool
	detail          string
}

type h2specResult struct {
	name  string
	cases []h2specCase
}

func (r h2specResult) find(id string) (h2specCase, bool) {
	for _, c := range r.cases {
		if c.id == id {
			return c, true
		}
	}
	return h2specCase{}, false
}

// retry runs case id against addr once more, and marks it passed if
// it passes this time.
func (r *h2specResult) retry(t testing.TB, bin, id, addr string) {
	t.Helper()
	i := slices.IndexFunc(r.cases, func(c h2specCase) bool { return c.id == id })
	if i < 0 || !r.cases[i].failed {
		return
	}
	// The case's whole section: h2spec's report leaves out the cases it
	// did not run, so their numbers are only right for whole sections.
	again, err := runH2Spec(bin, r.name, addr, false, t.TempDir(), id[:strings.LastIndex(id, "/")])
	if err != nil {
		t.Fatal(err)
	}
	if c, ok := again.find(id); ok && !c.failed && !c.skipped {
		t.Logf("h2spec %s: case %s passed on a re-run", r.name, id)
		r.cases[i] = c
	}
}

func (r h2specResult) passed() int {
	n := 0
	for _, c := range r.cases {
		if !c.failed && !c.skipped {
			n++
		}
	}
	return n
}

func (r h2specResult) skipped() int {
	n := 0
	for _, c := range r.cases {
		if c.skipped {
			n++
		}
	}
	return n
}

func (r h2specResult) failedIDs() []string {
	var ids []string
	for _, c := range r.cases {
		if c.failed {
			ids = append(ids, c.id)
		}
	}
	return ids
}

// runH2Spec runs every h2spec case (or those of the sections in only)
// against addr and reads its JUnit report, written in dir. h2spec exits
// non-zero when a case fails; that is judged from the report, not the exit
// code.
func runH2Spec(bin, name, addr string, tls bool, dir string, only ...string) (h2specResult, error) {
	res := h2specResult{name: name}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return res, err
	}
	report := filepath.Join(dir, "h2spec.xml")
	args := []string{"-h", host, "-p", port, "-o", "2", "-j", report}
	if tls {
		args = append(args, "-t", "-k")
	}
	args = append(args, only...)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		return res, fmt.Errorf("h2spec %s: did not finish in time: %w\n%s", name, ctx.Err(), out)
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		return res, fmt.Errorf("h2spec %s: %w\n%s", name, err, out)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		return res, fmt.Errorf("h2spec %s: no report (%w); output:\n%s", name, err, out)
	}
	if res.cases, err = parseH2SpecReport(b); err != nil {
		return res, fmt.Errorf("h2spec %s: %w", name, err)
	}
	if len(only) == 0 && len(res.cases) < 140 {
		return res, fmt.Errorf("h2spec %s: only %d cases in the report; output:\n%s", name, len(res.cases), out)
	}
	return res, nil
}

// parseH2SpecReport reads h2spec's JUnit report: one testsuite per section
// (its package attribute is the section's id), its testcases in h2spec's
// order, so the n-th is case n of that section.
func parseH2SpecReport(b []byte) ([]h2specCase, error) {
	var doc struct {
		Suites []struct {
			Package string `xml:"package,attr"`
			Cases   []struct {
				ClassName string `xml:"classname,attr"`
				Failure   *struct {
					Content string `xml:",innerxml"`
				} `xml:"failure"`
				Error *struct {
					Content string `xml:",innerxml"`
				} `xml:"error"`
				Skipped *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("reading the JUnit report: %w", err)
	}
	var out []h2specCase
	for _, s := range doc.Suites {
		for i, c := range s.Cases {
			hc := h2specCase{id: fmt.Sprintf("%s/%d", s.Package, i+1), desc: c.ClassName, skipped: c.Skipped != nil}
			switch {
			case c.Failure != nil:
				hc.failed, hc.detail = true, c.Failure.Content
			case c.Error != nil:
				hc.failed, hc.detail = true, c.Error.Content
			}
			out = append(out, hc)
		}
	}
	return out, nil
}
