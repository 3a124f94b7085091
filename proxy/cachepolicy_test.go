package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// cacheUpstream answers per request as the test case says: X-Fail makes
// it fail with 500 (so that the route's fallback looks in the cache);
// otherwise X-Answer-* request headers become response headers (X-Answer-
// Cache-Control: no-store → Cache-Control: no-store; repeated headers
// become repeated lines), X-Status the status, and the body names who
// asked (the Authorization, or "anonymous"), so a cached answer given to
// the wrong caller shows.
func cacheUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.Header.Get("X-Fail") != "" {
			http.Error(w, "upstream down", http.StatusInternalServerError)
			return
		}
		for k, vs := range r.Header {
			if name, ok := strings.CutPrefix(k, "X-Answer-"); ok {
				for _, v := range vs {
					w.Header().Add(name, v)
				}
			}
		}
		who := r.Header.Get("Authorization") + r.Header.Get("Cookie") + r.Header.Get("X-Api-Key") + r.Header.Get("Proxy-Authorization")
		if who == "" {
			who = "anonymous"
		}
		status := http.StatusOK
		fmt.Sscan(r.Header.Get("X-Status"), &status)
		w.WriteHeader(status)
		fmt.Fprintf(w, "answer for %s (%s)", who, r.Header.Get("Accept-Language"))
	}))
	t.Cleanup(up.Close)
	return up
}

// send makes one request with the given header lines ("Name: value").
func send(t *testing.T, client *http.Client, url string, lines ...string) httpResult {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"q":"opening hours"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		k, v, _ := strings.Cut(l, ": ")
		req.Header.Add(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return httpResult{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{status: resp.StatusCode, body: string(b), fallback: resp.Header.Get("X-Hopwatch-Fallback")}
}

// TestCacheRulesHTTP stores one answer (first) and then asks again while
// the upstream fails (then): the fallback cache must answer exactly when
// the rules allow, and never with another caller's answer.
func TestCacheRulesHTTP(t *testing.T) {
	up := cacheUpstream(t)
	for _, tc := range []struct {
		name    string
		headers []string // the route's fallback.cache.headers
		first   []string // request headers of the answer that may be stored
		then    []string // request headers of the failing request
		want    string   // the cached body it should get, "" for none
	}{
		{name: "plain answer is stored", want: "answer for anonymous ()"},
		{name: "authorization is not stored for anyone else", first: []string{"Authorization: Bearer alice"}},
		{name: "authorization is not stored for the same caller either", first: []string{"Authorization: Bearer alice"}, then: []string{"Authorization: Bearer alice"}},
		{name: "an anonymous answer is not served to a credentialed caller", then: []string{"Authorization: Bearer alice"}},
		{name: "cookie", first: []string{"Cookie: session=alice"}},
		{name: "proxy-authorization", first: []string{"Proxy-Authorization: Basic YWxpY2U6eA=="}},
		{name: "api key", first: []string{"X-Api-Key: alice-key"}},
		{name: "named authorization keys on its value", headers: []string{"authorization"},
			first: []string{"Authorization: Bearer alice"}, then: []string{"Authorization: Bearer alice"}, want: "answer for Bearer alice ()"},
		{name: "named authorization: another token misses", headers: []string{"Authorization"},
			first: []string{"Authorization: Bearer alice"}, then: []string{"Authorization: Bearer bob"}},
		{name: "named authorization: no token misses", headers: []string{"Authorization"},
			first: []string{"Authorization: Bearer alice"}},
		{name: "no-store on a second Cache-Control line", first: []string{"X-Answer-Cache-Control: max-age=60", "X-Answer-Cache-Control: no-store"}},
		{name: "no-cache inside a list", first: []string{"X-Answer-Cache-Control: max-age=60, No-Cache"}},
		{name: "private", first: []string{"X-Answer-Cache-Control: private"}},
		{name: "private with fields", first: []string{`X-Answer-Cache-Control: private="Set-Cookie", max-age=5`}},
		{name: "public max-age is stored", first: []string{"X-Answer-Cache-Control: public, max-age=60"}, want: "answer for anonymous ()"},
		{name: "request no-store", first: []string{"Cache-Control: no-store"}},
		{name: "set-cookie", first: []string{"X-Answer-Set-Cookie: id=1"}},
		{name: "vary star", first: []string{"X-Answer-Vary: *"}},
		{name: "vary: same language hits", first: []string{"X-Answer-Vary: Accept-Language", "Accept-Language: en"},
			then: []string{"Accept-Language: en"}, want: "answer for anonymous (en)"},
		{name: "vary: other language misses", first: []string{"X-Answer-Vary: Accept-Language", "Accept-Language: en"},
			then: []string{"Accept-Language: de"}},
		{name: "vary on a second line", first: []string{"X-Answer-Vary: Origin", "X-Answer-Vary: accept-language", "Accept-Language: en"},
			then: []string{"Accept-Language: de"}},
		{name: "203 is stored", first: []string{"X-Status: 203"}, want: "answer for anonymous ()"},
		{name: "201 is not", first: []string{"X-Status: 201"}},
		{name: "206 is not", first: []string{"X-Status: 206", "X-Answer-Content-Range: bytes 0-9/100"}},
		{name: "204 is not", first: []string{"X-Status: 204"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := startResEnv(t, httpSpec(up.Listener.Addr().String(), routes.Route{Fallback: &routes.Fallback{
				After: 5 * time.Second, Use: []string{"cache"}, Cache: &routes.FallbackCache{Headers: tc.headers},
			}}, routes.Upstream{}))
			client := &http.Client{}
			defer client.CloseIdleConnections()
			url := "http://" + env.httpAddr + "/kb/search"
			if r := send(t, client, url, tc.first...); r.err != nil || r.fallback != "" {
				t.Fatalf("first request: %+v", r)
			}
			r := send(t, client, url, append([]string{"X-Fail: 1"}, tc.then...)...)
			switch {
			case tc.want == "" && r.fallback != "":
				t.Fatalf("answered from the cache (%q), want the upstream's failure", r.body)
			case tc.want == "" && r.status != http.StatusInternalServerError:
				t.Fatalf("want the upstream's 500, got %+v", r)
			case tc.want != "" && (r.fallback != "cache" || r.body != tc.want):
				t.Fatalf("want the cached %q, got %+v", tc.want, r)
			}
		})
	}
}

// TestCacheTruncatedHTTP: an answer cut short (the upstream closes the
// connection before its declared length) is never stored.
func TestCacheTruncatedHTTP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				if req.Header.Get("X-Fail") != "" {
					io.WriteString(c, "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\ndown")
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
			}()
		}
	}()
	env := startResEnv(t, httpSpec(ln.Addr().String(), routes.Route{Fallback: &routes.Fallback{
		After: 5 * time.Second, Use: []string{"cache"},
	}}, routes.Upstream{}))
	client := &http.Client{}
	defer client.CloseIdleConnections()
	url := "http://" + env.httpAddr + "/kb"
	send(t, client, url) // cut short: the client sees an error or a short body
	if r := send(t, client, url, "X-Fail: 1"); r.fallback != "" {
		t.Fatalf("a truncated answer was stored and served: %+v", r)
	}
}

// TestCacheFreshOnReload: a reload that points the route at another
// upstream, or changes its match or listener, starts a fresh cache; one
// that changes nothing the answers depend on keeps it.
func TestCacheFreshOnReload(t *testing.T) {
	up := cacheUpstream(t)
	other := cacheUpstream(t)
	base := func() *routes.Spec {
		s := httpSpec(up.Listener.Addr().String(), routes.Route{Fallback: &routes.Fallback{
			After: 5 * time.Second, Use: []string{"cache"},
		}}, routes.Upstream{})
		s.Upstreams = append(s.Upstreams, routes.Upstream{Name: "kb2", Protocol: "http", Endpoints: []string{other.Listener.Addr().String()}})
		return s
	}
	for _, tc := range []struct {
		name   string
		change func(*routes.Spec)
		fresh  bool
	}{
		{"unrelated change keeps the cache", func(s *routes.Spec) { s.Callers = []string{"gateway"} }, false},
		{"another upstream", func(s *routes.Spec) { s.Routes[0].Upstream = "kb2" }, true},
		{"same upstream name, other endpoints", func(s *routes.Spec) {
			s.Upstreams[0].Endpoints = []string{other.Listener.Addr().String()}
		}, true},
		{"another match", func(s *routes.Spec) { s.Routes[0].Match.PathPrefix = "/kb/" }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := proxy.New(proxy.Options{})
			if err := p.Apply(base()); err != nil {
				t.Fatal(err)
			}
			defer shutdown(t, p)
			client := &http.Client{}
			defer client.CloseIdleConnections()
			url := "http://" + p.Addr("http").String() + "/kb/search"
			if r := send(t, client, url); r.status != 200 {
				t.Fatalf("warm-up: %+v", r)
			}
			s := base()
			tc.change(s)
			if err := p.Apply(s); err != nil {
				t.Fatal(err)
			}
			r := send(t, client, url, "X-Fail: 1")
			if got := r.fallback == "cache"; got == tc.fresh {
				t.Fatalf("answered from the old cache = %v, want %v (%+v)", got, !tc.fresh, r)
			}
		})
	}
}

// TestCacheRulesGRPC: the same rules on a gRPC listener: credentials,
// message boundaries in the key, and the upstream's headers kept.
func TestCacheRulesGRPC(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		backend := startEcho(t)
		unaryM := "/" + echoService + "/Unary"
		clientM := "/" + echoService + "/ClientStream"
		type call struct {
			method string
			md     []string // key, value, ...
			msgs   []string
		}
		for _, tc := range []struct {
			name      string
			headers   []string
			first     call
			then      call
			wantCache bool
			wantHdr   string // a header the cached answer must carry
		}{
			{name: "plain answer is stored, with its headers",
				first: call{unaryM, []string{"h-lang", "en"}, []string{"q"}}, then: call{unaryM, []string{"h-lang", "en"}, []string{"q"}},
				wantCache: true, wantHdr: "h-lang"},
			{name: "an empty answer is stored too",
				first: call{unaryM, nil, []string{""}}, then: call{unaryM, nil, []string{""}}, wantCache: true},
			{name: "authorization is not stored",
				first: call{unaryM, []string{"authorization", "Bearer alice"}, []string{"q"}}, then: call{unaryM, nil, []string{"q"}}},
			{name: "authorization: same caller misses too",
				first: call{unaryM, []string{"authorization", "Bearer alice"}, []string{"q"}}, then: call{unaryM, []string{"authorization", "Bearer alice"}, []string{"q"}}},
			{name: "cookie is not stored",
				first: call{unaryM, []string{"cookie", "session=alice"}, []string{"q"}}, then: call{unaryM, nil, []string{"q"}}},
			{name: "named authorization keys on its value", headers: []string{"authorization"},
				first: call{unaryM, []string{"authorization", "Bearer alice"}, []string{"q"}}, then: call{unaryM, []string{"authorization", "Bearer alice"}, []string{"q"}},
				wantCache: true},
			{name: "named authorization: another token misses", headers: []string{"authorization"},
				first: call{unaryM, []string{"authorization", "Bearer alice"}, []string{"q"}}, then: call{unaryM, []string{"authorization", "Bearer bob"}, []string{"q"}}},
			{name: "message boundaries are part of the key",
				first: call{clientM, nil, []string{"a", "bc"}}, then: call{clientM, nil, []string{"ab", "c"}}},
			{name: "same messages hit",
				first: call{clientM, nil, []string{"a", "bc"}}, then: call{clientM, nil, []string{"a", "bc"}}, wantCache: true},
			{name: "response cache-control no-store",
				first: call{unaryM, []string{"x-answer-cache-control", "no-store"}, []string{"q"}}, then: call{unaryM, nil, []string{"q"}}},
			{name: "response set-cookie",
				first: call{unaryM, []string{"x-answer-set-cookie", "id=1"}, []string{"q"}}, then: call{unaryM, nil, []string{"q"}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				spec := &routes.Spec{
					Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
					Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo", Fallback: &routes.Fallback{
						After: 5 * time.Second, Use: []string{"cache"}, Cache: &routes.FallbackCache{Headers: tc.headers},
					}}},
					Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
				}
				env := startResEnv(t, spec)
				cc := dial(t, env.grpcAddr)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				do := func(c call, fail bool) observed {
					md := metadata.Pairs(c.md...)
					if fail {
						md.Set("x-status", fmt.Sprint(int(codes.Unavailable)))
					}
					if c.method == unaryM {
						return unary(ctx, cc, c.method, md, []byte(c.msgs[0]))
					}
					var sends [][]byte
					for _, m := range c.msgs {
						sends = append(sends, []byte(m))
					}
					return stream(ctx, cc, c.method, md, sends)
				}
				if o := do(tc.first, false); o.Code != codes.OK {
					t.Fatalf("first call: %v", o)
				}
				o := do(tc.then, true)
				cached := len(o.Trailer.Get("x-hopwatch-fallback")) > 0
				if cached != tc.wantCache {
					t.Fatalf("answered from the cache = %v, want %v: %v", cached, tc.wantCache, o)
				}
				if !cached && o.Code != codes.Unavailable {
					t.Fatalf("want the upstream's UNAVAILABLE, got %v", o)
				}
				if tc.wantHdr != "" && len(o.Header.Get(tc.wantHdr)) == 0 {
					t.Fatalf("the cached answer lost the upstream's header %q: %v", tc.wantHdr, o)
				}
			})
		}
	})
}

// TestCachedGRPCAnswerKeepsMetadata: a gRPC answer served from the cache
// carries the upstream's response headers and trailers, whether the
// foreground call stored it or the background task that finished a late
// call did. (The cached-answer header bug: the headers were once cleared
// when sent to the client, before the cache write read them.)
func TestCachedGRPCAnswerKeepsMetadata(t *testing.T) {
	forGRPCListeners(t, func(t *testing.T, relay string) {
		backend := startEcho(t)
		m := "/" + echoService + "/Unary"
		for _, tc := range []struct {
			name  string
			first []string // metadata of the call that fills the cache
			bg    bool     // the cache is filled in the background
		}{
			{name: "stored by the foreground call", first: []string{"h-lang", "en", "t-src", "first"}},
			{name: "stored by the background task", first: []string{"h-lang", "en", "t-src", "first", "x-sleep-ms", "600"}, bg: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				spec := &routes.Spec{
					Listeners: []routes.Listener{{Name: "grpc", Address: "127.0.0.1:0", Protocol: "grpc", Relay: relay}},
					Routes: []routes.Route{{Name: "echo", Listener: "grpc", Upstream: "echo", Fallback: &routes.Fallback{
						After:  150 * time.Millisecond,
						Use:    []string{"cache", "static"},
						Static: &routes.FallbackStatic{GRPCCode: "unavailable", GRPCMessage: "degraded"},
					}}},
					Upstreams: []routes.Upstream{{Name: "echo", Protocol: "grpc", Endpoints: []string{backend.addr}}},
				}
				env := startResEnv(t, spec)
				cc := dial(t, env.grpcAddr)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()

				o := unary(ctx, cc, m, metadata.Pairs(tc.first...), []byte("q"))
				if tc.bg {
					if src := o.Trailer.Get("x-hopwatch-fallback"); len(src) != 1 || src[0] != "static" {
						t.Fatalf("late call: want the static fallback, got %v", o)
					}
					testkit.WaitFor(t, "background refresh", func() bool {
						return env.metric(t, "hopwatch_background_total", map[string]string{"result": "cached"}) == 1
					})
				} else if o.Code != codes.OK {
					t.Fatalf("first call: %v", o)
				}
				// The upstream fails now; the answer comes from the cache, with
				// the first call's metadata, not this one's.
				o = unary(ctx, cc, m, metadata.Pairs("h-lang", "de", "t-src", "second", "x-status", fmt.Sprint(int(codes.Unavailable))), []byte("q"))
				if src := o.Trailer.Get("x-hopwatch-fallback"); o.Code != codes.OK || len(src) != 1 || src[0] != "cache" {
					t.Fatalf("want the cached answer, got %v", o)
				}
				if got := o.Header.Get("h-lang"); len(got) != 1 || got[0] != "en" {
					t.Errorf("cached answer's header h-lang = %q, want the upstream's [en]: %v", got, o)
				}
				if got := o.Trailer.Get("t-src"); len(got) != 1 || got[0] != "first" {
					t.Errorf("cached answer's trailer t-src = %q, want the upstream's [first]: %v", got, o)
				}
			})
		}
	})
}
