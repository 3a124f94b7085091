package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hopwatch/hopwatch/routes"
)

// uriRecorder is an HTTP upstream that answers with its name and records
// the request target and Host of everything it receives.
type uriRecorder struct {
	name string
	addr string
	mu   sync.Mutex
	seen []string // "host target"
}

func startURIRecorder(t *testing.T, name string) *uriRecorder {
	u := &uriRecorder{name: name}
	srv := startHTTPUpstream(t, protoHTTP1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Host+" "+r.RequestURI)
		u.mu.Unlock()
		io.WriteString(w, u.name)
	}), nil)
	u.addr = hostPort(srv)
	return u
}

func (u *uriRecorder) take() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.seen
	u.seen = nil
	return s
}

// rawHTTP1 sends one request, byte for byte as written, and reads the
// response; no client library gets the chance to clean the target.
func rawHTTP1(t *testing.T, addr, request string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, waitLong)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitLong))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// h2cTarget sends one request over h2c with :path exactly target (the
// transport takes an opaque URL's path as is).
func h2cTarget(t *testing.T, client *http.Client, addr, method, host, target string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	if host == "" {
		host = addr
	}
	// The transport strips "http://" + Host from an opaque target.
	req.URL = &url.URL{Scheme: "http", Host: addr, Opaque: "//" + host + target}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHTTPAmbiguousPaths sends the path-confusion class through the real
// proxy: a route for /kb/ must never forward a path that an upstream could
// read as one outside /kb/ (dot-segments, encoded ones, encoded separators,
// path parameters, backslashes), and what it forwards must be the very
// string it matched. Each request goes over HTTP/1.1 written raw and over
// h2c with an exact :path.
func TestHTTPAmbiguousPaths(t *testing.T) {
	kb := startURIRecorder(t, "kb")
	api := startURIRecorder(t, "api")
	spec := &routes.Spec{
		Listeners: []routes.Listener{{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}},
		Routes: []routes.Route{
			{Name: "kb", Listener: "http", Match: routes.Match{PathPrefix: "/kb/"}, Upstream: "kb"},
			{Name: "api", Listener: "http", Match: routes.Match{Host: "api.internal"}, Upstream: "api"},
		},
		Upstreams: []routes.Upstream{
			{Name: "kb", Protocol: routes.UpstreamHTTP, Endpoints: []string{kb.addr}},
			{Name: "api", Protocol: routes.UpstreamHTTP, Endpoints: []string{api.addr}},
		},
	}
	p := startProxy(t, spec)
	addr := p.Addr("http").String()
	h2c := newHTTPClient(t, protoH2C)

	cases := []struct {
		name   string
		target string
		host   string // default: the proxy's address
		want   int
		// up names the upstream that must see exactly the target (or
		// seen, when set); "" = none may see anything.
		up   string
		seen string
		h1   bool // HTTP/1.1 only (h2 has no such request form)
	}{
		{"plain", "/kb/search?q=1", "", 200, "kb", "", false},
		{"escapes forwarded as written", "/kb/caf%C3%A9/%41%20b", "", 200, "kb", "", false},
		{"empty segment kept", "/kb//search", "", 200, "kb", "", false},
		{"leading double slash", "//evil.example/kb/x", "", 400, "", "", false},
		{"dots inside names", "/kb/v1.2/...x", "", 200, "kb", "", false},
		{"dot-dot", "/kb/../admin/secret", "", 400, "", "", false},
		{"dot-dot at the end", "/kb/..", "", 400, "", "", false},
		{"dot", "/kb/./admin", "", 400, "", "", false},
		{"encoded dot-dot", "/kb/%2e%2e/admin/secret", "", 400, "", "", false},
		{"encoded dot-dot, upper case", "/kb/%2E%2E/admin/secret", "", 400, "", "", false},
		{"half-encoded dot-dot", "/kb/.%2E/admin", "", 400, "", "", false},
		{"encoded slash", "/kb/..%2fadmin%2fsecret", "", 400, "", "", false},
		{"encoded slash alone", "/kb/a%2Fb", "", 400, "", "", false},
		{"encoded backslash", "/kb/..%5cadmin", "", 400, "", "", false},
		{"encoded NUL", "/kb/secret%00.txt", "", 400, "", "", false},
		{"dot-dot path parameter", "/kb/..;/admin/secret", "", 400, "", "", false},
		{"raw backslash", "/kb/..\\admin", "", 400, "", "", true},
		{"host route, dot-dot", "/a/../b", "api.internal", 400, "", "", false},
		{"host with a trailing dot, port and case", "/x", "API.Internal.:8080", 200, "api", "", false},
		{"absolute-form goes to the route's upstream", "http://evil.example/kb/x", "evil.example", 200, "kb", "/kb/x", true},
		{"absolute-form with a dot-dot", "http://evil.example/kb/../admin", "evil.example", 400, "", "", true},
		{"absolute-form elsewhere", "http://evil.example/admin", "evil.example", 404, "", "", true},
		{"asterisk-form", "*", "", 400, "", "", true},
	}
	check := func(t *testing.T, body, target, up, seen string) {
		t.Helper()
		gotKB, gotAPI := kb.take(), api.take()
		switch up {
		case "":
			if len(gotKB)+len(gotAPI) != 0 {
				t.Fatalf("refused request reached upstreams: kb %q api %q", gotKB, gotAPI)
			}
			return
		case "kb":
			if len(gotAPI) != 0 || len(gotKB) != 1 {
				t.Fatalf("kb saw %q, api saw %q; want one request on kb", gotKB, gotAPI)
			}
			if seen == "" {
				seen = target
			}
			if want := kb.addr + " " + seen; gotKB[0] != want {
				t.Fatalf("kb saw %q, want %q (the matched path, byte for byte)", gotKB[0], want)
			}
		case "api":
			if len(gotKB) != 0 || len(gotAPI) != 1 || !strings.HasSuffix(gotAPI[0], " "+target) {
				t.Fatalf("kb saw %q, api saw %q; want %q on api", gotKB, gotAPI, target)
			}
		}
		if body != up {
			t.Fatalf("body %q, want %q", body, up)
		}
	}
	for _, tc := range cases {
		t.Run("http1/"+tc.name, func(t *testing.T) {
			host := tc.host
			if host == "" {
				host = addr
			}
			st, body := rawHTTP1(t, addr, fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", tc.target, host))
			if st != tc.want {
				t.Fatalf("status %d %q, want %d", st, body, tc.want)
			}
			if st == 400 && !strings.HasPrefix(body, "hopwatch: bad request") && tc.target != "/kb/..\\admin" {
				t.Errorf("400 body %q does not come from hopwatch", body)
			}
			check(t, body, tc.target, tc.up, tc.seen)
		})
		if tc.h1 {
			continue
		}
		t.Run("h2c/"+tc.name, func(t *testing.T) {
			st, body := h2cTarget(t, h2c, addr, "GET", tc.host, tc.target)
			if st != tc.want {
				t.Fatalf("status %d %q, want %d", st, body, tc.want)
			}
			check(t, body, tc.target, tc.up, tc.seen)
		})
	}

	// CONNECT asks for a tunnel: refused, whatever the routes say, and
	// nothing is dialled or forwarded.
	t.Run("http1/CONNECT", func(t *testing.T) {
		st, body := rawHTTP1(t, addr, "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
		if st != http.StatusBadRequest || !strings.Contains(body, "CONNECT is not proxied") {
			t.Fatalf("CONNECT: %d %q, want 400 from hopwatch", st, body)
		}
		check(t, body, "", "", "")
	})
}

// TestGRPCAmbiguousMethods checks the gRPC side of the same class, on the
// gRPC listener and as gRPC over the HTTP listener: a method path that is
// not "/service/method" is refused with INVALID_ARGUMENT before routing,
// although the catch-all route for test.v1.Echo would match its prefix.
func TestGRPCAmbiguousMethods(t *testing.T) {
	backend := startEcho(t)
	for _, lproto := range grpcListenerKinds {
		t.Run(lproto+" listener", func(t *testing.T) {
			spec := &routes.Spec{
				Listeners: []routes.Listener{inListener("in", lproto)},
				Routes:    []routes.Route{{Name: "echo", Listener: "in", Match: routes.Match{GRPCService: echoService}, Upstream: "echo"}},
				Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{backend.addr}}},
			}
			p := startProxy(t, spec)
			cc := dial(t, p.Addr("in").String())
			for _, tc := range []struct {
				name, method string
				want         codes.Code
			}{
				{"method", "/" + echoService + "/Unary", codes.OK},
				{"dot-dot", "/" + echoService + "/../Unary", codes.InvalidArgument},
				{"dot-dot method", "/" + echoService + "/..", codes.InvalidArgument},
				{"encoded dot-dot", "/" + echoService + "/%2e%2e/Unary", codes.InvalidArgument},
				{"extra segment", "/" + echoService + "/Unary/x", codes.InvalidArgument},
			} {
				t.Run(tc.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), waitLong)
					defer cancel()
					o := unary(ctx, cc, tc.method, nil, []byte("q"))
					if o.Code != tc.want {
						t.Fatalf("%s: %v, want %v", tc.method, o, tc.want)
					}
					if tc.want != codes.OK && !strings.HasPrefix(o.Message, "hopwatch: bad request") {
						t.Fatalf("%s: message %q does not come from hopwatch", tc.method, o.Message)
					}
				})
			}
		})
	}
}

// TestGRPCHostMatch: a host match on gRPC calls reads :authority the way
// HTTP reads Host, ignoring case, port and a trailing dot, on both
// listeners; another authority finds no route.
func TestGRPCHostMatch(t *testing.T) {
	backend := startEcho(t)
	for _, lproto := range grpcListenerKinds {
		t.Run(lproto+" listener", func(t *testing.T) {
			spec := &routes.Spec{
				Listeners: []routes.Listener{inListener("in", lproto)},
				Routes:    []routes.Route{{Name: "echo", Listener: "in", Match: routes.Match{Host: "kb.internal", GRPCService: echoService}, Upstream: "echo"}},
				Upstreams: []routes.Upstream{{Name: "echo", Protocol: routes.UpstreamGRPC, Endpoints: []string{backend.addr}}},
			}
			p := startProxy(t, spec)
			for _, tc := range []struct {
				authority string
				want      codes.Code
			}{
				{"kb.internal", codes.OK},
				{"KB.Internal.:7000", codes.OK},
				{"kb.internal.evil", codes.Unimplemented},
			} {
				t.Run(tc.authority, func(t *testing.T) {
					cc, err := grpc.NewClient(p.Addr("in").String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(tc.authority))
					if err != nil {
						t.Fatal(err)
					}
					defer cc.Close()
					ctx, cancel := context.WithTimeout(context.Background(), waitLong)
					defer cancel()
					if o := unary(ctx, cc, "/"+echoService+"/Unary", nil, []byte("q")); o.Code != tc.want {
						t.Fatalf("authority %q: %v, want %v", tc.authority, o, tc.want)
					}
				})
			}
		})
	}
}
