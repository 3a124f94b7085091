package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// Client and upstream protocols of the HTTP tests.
const (
	protoHTTP1 = "http1" // HTTP/1.1 only
	protoH2C   = "h2c"   // cleartext HTTP/2 with prior knowledge
)

// waitLong bounds every wait for something that must happen; it is never a
// measure of speed (the test machines are slow and shared).
const waitLong = 10 * time.Second

// newHTTPClient returns a client that speaks only proto, never follows
// redirects and never asks for compression (so bodies arrive as sent).
func newHTTPClient(t testing.TB, proto string) *http.Client {
	t.Helper()
	tr := &http.Transport{DisableCompression: true, Protocols: new(http.Protocols)}
	switch proto {
	case protoHTTP1:
		tr.Protocols.SetHTTP1(true)
	case protoH2C:
		tr.Protocols.SetUnencryptedHTTP2(true)
	default:
		t.Fatalf("unknown client protocol %q", proto)
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// startHTTPUpstream starts a loopback server for h: HTTP/1.1 only for
// protoHTTP1, HTTP/1.1 and h2c for protoH2C. configure, if not nil, may set
// server fields (ConnState) before it starts.
func startHTTPUpstream(t testing.TB, proto string, h http.Handler, configure func(*http.Server)) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	s.Config.Protocols = new(http.Protocols)
	s.Config.Protocols.SetHTTP1(true)
	if proto == protoH2C {
		s.Config.Protocols.SetUnencryptedHTTP2(true)
	}
	if configure != nil {
		configure(s.Config)
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// upstreamProtocol maps a test protocol to the upstream protocol in the spec.
func upstreamProtocol(proto string) string {
	if proto == protoH2C {
		return routes.UpstreamH2C
	}
	return routes.UpstreamHTTP
}

// hostPort is the address of a test server, as an upstream endpoint.
func hostPort(s *httptest.Server) string { return s.Listener.Addr().String() }

// startProxy applies spec to a new proxy and shuts it down at cleanup.
func startProxy(t testing.TB, spec *routes.Spec) *proxy.Proxy {
	t.Helper()
	p := proxy.New(proxy.Options{})
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdown(t, p) })
	return p
}

// singleRouteSpec is one http listener with one catch-all route to one
// upstream.
func singleRouteSpec(upProto string, endpoints ...string) *routes.Spec {
	return &routes.Spec{
		Listeners: []routes.Listener{{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}},
		Routes:    []routes.Route{{Name: "all", Listener: "http", Upstream: "up"}},
		Upstreams: []routes.Upstream{{Name: "up", Protocol: upProto, Endpoints: endpoints}},
	}
}

func proxyURL(p *proxy.Proxy, listener string) string {
	return "http://" + p.Addr(listener).String()
}

// httpObserved is everything an HTTP client can see of one exchange, less
// what legitimately differs per hop: Date, Content-Length and
// Transfer-Encoding (message framing).
type httpObserved struct {
	Status  int
	Header  http.Header
	Body    string // length and hash
	Trailer http.Header
}

func (o httpObserved) String() string {
	return fmt.Sprintf("status=%d body=%s\n  header=%v\n  trailer=%v", o.Status, o.Body, o.Header, o.Trailer)
}

// transparencyReq is one request of the transparency table.
type transparencyReq struct {
	method  string
	path    string // with query
	header  http.Header
	body    []byte
	noLen   bool // send the body with unknown length (chunked / no content-length)
	noBody  bool // http.NoBody
	wantSt  int  // sanity check of the direct call, so that a broken handler cannot make the test vacuous
	wantTrl bool // sanity check: the direct call has trailers
}

func doObserved(t *testing.T, c *http.Client, base string, r transparencyReq) httpObserved {
	t.Helper()
	var body io.Reader
	switch {
	case r.noBody:
		body = http.NoBody
	case r.noLen:
		body = io.MultiReader(bytes.NewReader(r.body)) // hides the length
	case r.body != nil:
		body = bytes.NewReader(r.body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, r.method, base+r.path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range r.header {
		req.Header[k] = slices.Clone(v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", r.method, base, r.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s%s: reading body: %v", r.method, base, r.path, err)
	}
	h := resp.Header.Clone()
	for _, k := range []string{"Date", "Content-Length", "Transfer-Encoding"} {
		delete(h, k)
	}
	trl := resp.Trailer
	if len(trl) == 0 {
		trl = nil
	}
	return httpObserved{Status: resp.StatusCode, Header: h, Body: summarize(b), Trailer: trl}
}

// mirror is the upstream of the transparency test. It reports what it
// received in response headers (so that request-side differences show up
// in the comparison) and answers as the request asks:
//
//	X-Status        response status
//	X-Resp-Size     send this many generated bytes instead of the echo
//	X-Trailers      declare and send trailers, plus an undeclared one
//
// The body is the request body if there was one, else a short text.
func mirror(w http.ResponseWriter, r *http.Request) {
	in, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	self := r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
	h := w.Header()
	h.Set("Echo-Method", r.Method)
	h.Set("Echo-Uri", r.RequestURI)
	h.Set("Echo-Host-Is-Endpoint", strconv.FormatBool(r.Host == self))
	h.Set("Echo-Headers", requestHeaders(r.Header))
	h.Set("Echo-Body", summarize(in))
	h["X-Multi"] = []string{"one", "two, three"}
	h.Add("Set-Cookie", "a=1; Path=/")
	h.Add("Set-Cookie", "b=2; Path=/kb")
	trailers := r.Header.Get("X-Trailers") != ""
	if trailers {
		h.Set("Trailer", "X-Checksum, X-Count")
	}
	status := http.StatusOK
	if s := r.Header.Get("X-Status"); s != "" {
		status, _ = strconv.Atoi(s)
	}
	out := in
	if n := r.Header.Get("X-Resp-Size"); n != "" {
		size, _ := strconv.Atoi(n)
		out = bigPayload(size)
	} else if len(out) == 0 {
		out = []byte("hello from " + r.URL.Path)
	}
	w.WriteHeader(status)
	w.Write(out) // ErrBodyNotAllowed for 204/304: nothing is sent, as wanted
	if trailers {
		h.Set("X-Checksum", summarize(out))
		h["X-Count"] = []string{"1", "2"}
		h.Set(http.TrailerPrefix+"X-Late", "undeclared")
	}
}

// requestHeaders renders the request headers an upstream saw, except those
// a proxy adds or rewrites by design (X-Forwarded-*, Forwarded) and framing.
func requestHeaders(h http.Header) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(h)) {
		if strings.HasPrefix(k, "X-Forwarded-") || k == "Forwarded" || k == "Content-Length" {
			continue
		}
		fmt.Fprintf(&b, "%s=%q;", k, h[k])
	}
	return strconv.Quote(b.String())
}

// protoLog records the protocol of the requests an upstream received from
// the proxy (those carrying X-Forwarded-For).
type protoLog struct {
	mu     sync.Mutex
	protos map[string]int
}

func (l *protoLog) wrap(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Forwarded-For") != "" {
			l.mu.Lock()
			if l.protos == nil {
				l.protos = map[string]int{}
			}
			l.protos[r.Proto]++
			l.mu.Unlock()
		}
		h(w, r)
	}
}

func (l *protoLog) seen() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.protos)
}

// TestHTTPTransparency sends each request directly to an upstream and
// through the proxy, with an HTTP/1.1 client and with an h2c client, to an
// HTTP/1.1 upstream and to an h2c upstream, and requires the client to
// observe the same status, headers, body and trailers, and the upstream to
// receive the same method, URI, headers and body.
//
// The direct baseline is the h2c-capable upstream (it speaks both client
// protocols); the HTTP/1.1-only one runs the same handler.
func TestHTTPTransparency(t *testing.T) {
	var h1Log, h2Log protoLog
	h1Up := startHTTPUpstream(t, protoHTTP1, h1Log.wrap(mirror), nil)
	h2Up := startHTTPUpstream(t, protoH2C, h2Log.wrap(mirror), nil)
	spec := &routes.Spec{
		Listeners: []routes.Listener{
			{Name: "to-http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP},
			{Name: "to-h2c", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP},
		},
		Routes: []routes.Route{
			{Name: "http", Listener: "to-http", Upstream: "h1"},
			{Name: "h2c", Listener: "to-h2c", Upstream: "h2"},
		},
		Upstreams: []routes.Upstream{
			{Name: "h1", Protocol: routes.UpstreamHTTP, Endpoints: []string{hostPort(h1Up)}},
			{Name: "h2", Protocol: routes.UpstreamH2C, Endpoints: []string{hostPort(h2Up)}},
		},
	}
	p := startProxy(t, spec)
	via := map[string]string{ // upstream protocol → proxy listener URL
		protoHTTP1: proxyURL(p, "to-http"),
		protoH2C:   proxyURL(p, "to-h2c"),
	}

	big := bigPayload(8 << 20)
	cases := []struct {
		name string
		req  transparencyReq
	}{
		{"GET", transparencyReq{method: "GET", path: "/kb/item", wantSt: 200}},
		// An encoded '/' is refused (TestHTTPAmbiguousPaths); other escapes pass as written.
		{"GET with odd escaping in path and query", transparencyReq{method: "GET", path: "/kb/a%41b%2Cc?q=x%20y&q=z", wantSt: 200}},
		{"GET with encoded unicode and plus", transparencyReq{method: "GET", path: "/kb/caf%C3%A9+x?a=%2B%26b&empty=&flag", wantSt: 200}},
		{"POST with body", transparencyReq{method: "POST", path: "/kb/search",
			header: http.Header{"Content-Type": {"application/json"}}, body: []byte(`{"q":"opening hours"}`), wantSt: 200}},
		{"POST with body of unknown length", transparencyReq{method: "POST", path: "/kb/stream",
			body: []byte("streamed request body"), noLen: true, wantSt: 200}},
		{"HEAD", transparencyReq{method: "HEAD", path: "/kb/item", wantSt: 200}},
		{"PUT with empty body", transparencyReq{method: "PUT", path: "/kb/item", noBody: true, wantSt: 200}},
		{"DELETE", transparencyReq{method: "DELETE", path: "/kb/item/7", wantSt: 200}},
		{"8 MiB request body", transparencyReq{method: "POST", path: "/kb/upload", body: big, wantSt: 200}},
		{"8 MiB request body of unknown length", transparencyReq{method: "POST", path: "/kb/upload", body: big, noLen: true, wantSt: 200}},
		{"8 MiB response body", transparencyReq{method: "GET", path: "/kb/download",
			header: http.Header{"X-Resp-Size": {strconv.Itoa(8 << 20)}}, wantSt: 200}},
		{"multiple same-name request headers", transparencyReq{method: "GET", path: "/kb/h",
			header: http.Header{"X-Multi-Req": {"a", "b", "c, d"}, "Accept": {"text/html", "application/json"},
				"Cookie": {"s=1; t=2"}, "X-Utf8": {"caf\xc3\xa9"}}, wantSt: 200}},
		{"status 201", transparencyReq{method: "POST", path: "/kb/new", body: []byte("x"),
			header: http.Header{"X-Status": {"201"}}, wantSt: 201}},
		{"status 204", transparencyReq{method: "DELETE", path: "/kb/x", header: http.Header{"X-Status": {"204"}}, wantSt: 204}},
		{"status 304", transparencyReq{method: "GET", path: "/kb/x",
			header: http.Header{"X-Status": {"304"}, "If-None-Match": {`"v1"`}}, wantSt: 304}},
		{"status 404", transparencyReq{method: "GET", path: "/kb/missing", header: http.Header{"X-Status": {"404"}}, wantSt: 404}},
		{"status 500", transparencyReq{method: "GET", path: "/kb/broken", header: http.Header{"X-Status": {"500"}}, wantSt: 500}},
		{"response trailers", transparencyReq{method: "GET", path: "/kb/trl", header: http.Header{"X-Trailers": {"1"}},
			wantSt: 200, wantTrl: true}},
		{"response trailers after a request body", transparencyReq{method: "POST", path: "/kb/trl", body: []byte("abc"),
			header: http.Header{"X-Trailers": {"1"}}, wantSt: 200, wantTrl: true}},
		{"response trailers after 8 MiB", transparencyReq{method: "GET", path: "/kb/trl",
			header: http.Header{"X-Trailers": {"1"}, "X-Resp-Size": {strconv.Itoa(8 << 20)}}, wantSt: 200, wantTrl: true}},
	}
	for _, clientProto := range []string{protoHTTP1, protoH2C} {
		client := newHTTPClient(t, clientProto)
		for _, tc := range cases {
			t.Run(clientProto+" client/"+tc.name, func(t *testing.T) {
				want := doObserved(t, client, h2Up.URL, tc.req)
				if want.Status != tc.req.wantSt {
					t.Fatalf("direct call: status %d, want %d (handler broken?)", want.Status, tc.req.wantSt)
				}
				if tc.req.wantTrl != (want.Trailer != nil) {
					t.Fatalf("direct call: trailers %v, want some: %v", want.Trailer, tc.req.wantTrl)
				}
				if want.Header.Get("Echo-Host-Is-Endpoint") != "true" {
					t.Fatalf("direct call: Host is not the endpoint address: %v", want.Header)
				}
				for _, upProto := range []string{protoHTTP1, protoH2C} {
					got := doObserved(t, client, via[upProto], tc.req)
					if !reflect.DeepEqual(got, want) {
						t.Errorf("through the proxy to the %s upstream:\n got: %s\nwant: %s", upProto, got, want)
					}
				}
			})
		}
	}
	// The proxy speaks each upstream's own protocol to it.
	if got := h1Log.seen(); len(got) != 1 || got["HTTP/1.1"] == 0 {
		t.Errorf("http upstream received protocols %v, want HTTP/1.1 only", got)
	}
	if got := h2Log.seen(); len(got) != 1 || got["HTTP/2.0"] == 0 {
		t.Errorf("h2c upstream received protocols %v from the proxy, want HTTP/2.0 only", got)
	}
}

// TestHTTPStreaming checks that streamed responses reach the client as the
// upstream flushes them: the first event must arrive while the upstream is
// still blocked, waiting for the test to let it finish.
func TestHTTPStreaming(t *testing.T) {
	kinds := []struct {
		name        string
		contentType string
		first, rest string
	}{
		{"server-sent events", "text/event-stream", "data: token-1\n\n", "data: token-2\n\ndata: [DONE]\n\n"},
		{"chunked without content-length", "application/x-ndjson", `{"token":1}` + "\n", `{"token":2}` + "\n"},
	}
	for _, kind := range kinds {
		for _, upProto := range []string{protoHTTP1, protoH2C} {
			for _, clientProto := range []string{protoHTTP1, protoH2C} {
				name := fmt.Sprintf("%s/%s upstream/%s client", kind.name, upProto, clientProto)
				t.Run(name, func(t *testing.T) {
					release := make(chan struct{})
					var releaseOnce sync.Once
					letGo := func() { releaseOnce.Do(func() { close(release) }) }
					t.Cleanup(letGo)
					finished := make(chan struct{})
					up := startHTTPUpstream(t, upProto, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
						defer close(finished)
						w.Header().Set("Content-Type", kind.contentType)
						w.Header().Set("Cache-Control", "no-cache")
						io.WriteString(w, kind.first)
						http.NewResponseController(w).Flush()
						select {
						case <-release:
						case <-r.Context().Done():
							return
						}
						io.WriteString(w, kind.rest)
					}), nil)
					p := startProxy(t, singleRouteSpec(upstreamProtocol(upProto), hostPort(up)))
					client := newHTTPClient(t, clientProto)

					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					req, _ := http.NewRequestWithContext(ctx, "GET", proxyURL(p, "http")+"/v1/generate", nil)
					type firstRead struct {
						resp  *http.Response
						first string
						err   error
					}
					got := make(chan firstRead, 1)
					go func() {
						resp, err := client.Do(req)
						if err != nil {
							got <- firstRead{err: err}
							return
						}
						buf := make([]byte, len(kind.first))
						_, err = io.ReadFull(resp.Body, buf)
						got <- firstRead{resp: resp, first: string(buf), err: err}
					}()
					var fr firstRead
					select {
					case fr = <-got:
					case <-time.After(waitLong):
						cancel()
						letGo()
						t.Fatal("first event not received while the upstream was still streaming")
					}
					if fr.resp != nil {
						defer fr.resp.Body.Close()
					}
					if fr.err != nil {
						t.Fatalf("reading the first event: %v", fr.err)
					}
					select {
					case <-finished:
						t.Fatal("upstream finished before it was released")
					default:
					}
					if fr.first != kind.first {
						t.Fatalf("first event %q, want %q", fr.first, kind.first)
					}
					if ct := fr.resp.Header.Get("Content-Type"); ct != kind.contentType {
						t.Errorf("Content-Type %q, want %q", ct, kind.contentType)
					}
					if fr.resp.ContentLength != -1 {
						t.Errorf("ContentLength %d, want -1 (streamed)", fr.resp.ContentLength)
					}
					letGo()
					rest, err := io.ReadAll(fr.resp.Body)
					if err != nil {
						t.Fatalf("reading the rest: %v", err)
					}
					if string(rest) != kind.rest {
						t.Fatalf("rest %q, want %q", rest, kind.rest)
					}
				})
			}
		}
	}
}

// TestHTTPWebSocket checks that a WebSocket upgrade passes through to an
// HTTP/1.1 upstream: subprotocol negotiation, messages both ways, and a
// close from either side.
func TestHTTPWebSocket(t *testing.T) {
	upgrades := make(chan http.Header, 4)
	up := startHTTPUpstream(t, protoHTTP1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upgrades <- r.Header.Clone()
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"chat.v1"}})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		ctx := r.Context()
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if string(msg) == "please close" {
				c.Close(websocket.StatusGoingAway, "upstream closes")
				return
			}
			if err := c.Write(ctx, typ, append([]byte("echo:"), msg...)); err != nil {
				return
			}
		}
	}), nil)
	p := startProxy(t, singleRouteSpec(routes.UpstreamHTTP, hostPort(up)))
	client := newHTTPClient(t, protoHTTP1)
	wsURL := "ws://" + p.Addr("http").String() + "/ws/chat?session=s1"

	cases := []struct {
		name          string
		upstreamClose bool
	}{
		{"client closes", false},
		{"upstream closes", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, resp, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPClient: client, Subprotocols: []string{"chat.v1"}})
			if err != nil {
				t.Fatalf("dial through the proxy: %v", err)
			}
			defer c.CloseNow()
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d, want 101", resp.StatusCode)
			}
			if c.Subprotocol() != "chat.v1" {
				t.Errorf("subprotocol %q, want chat.v1", c.Subprotocol())
			}
			select {
			case h := <-upgrades:
				if h.Get("Upgrade") != "websocket" || !strings.EqualFold(h.Get("Connection"), "upgrade") {
					t.Errorf("upstream saw Upgrade=%q Connection=%q", h.Get("Upgrade"), h.Get("Connection"))
				}
			case <-time.After(waitLong):
				t.Fatal("upstream never saw the upgrade request")
			}
			c.SetReadLimit(1 << 20)
			msgs := []struct {
				typ  websocket.MessageType
				data []byte
			}{
				{websocket.MessageText, []byte("hello")},
				{websocket.MessageBinary, bigPayload(256 << 10)},
				{websocket.MessageText, []byte("")},
				{websocket.MessageText, []byte("知识库 \U0001F916")},
			}
			for i, m := range msgs {
				if err := c.Write(ctx, m.typ, m.data); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				typ, got, err := c.Read(ctx)
				if err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
				if typ != m.typ || !bytes.Equal(got, append([]byte("echo:"), m.data...)) {
					t.Fatalf("message %d: got type %v %s, want type %v echo of %s", i, typ, summarize(got), m.typ, summarize(m.data))
				}
			}
			if tc.upstreamClose {
				if err := c.Write(ctx, websocket.MessageText, []byte("please close")); err != nil {
					t.Fatal(err)
				}
				_, _, err := c.Read(ctx)
				if st := websocket.CloseStatus(err); st != websocket.StatusGoingAway {
					t.Fatalf("read after upstream close: %v (status %v), want StatusGoingAway", err, st)
				}
				return
			}
			if err := c.Close(websocket.StatusNormalClosure, "bye"); err != nil {
				t.Fatalf("close handshake through the proxy: %v", err)
			}
		})
	}
}

// rawMessage is an HTTP/1.1 message head and body as they were on the wire.
type rawMessage struct {
	first   string
	header  textproto.MIMEHeader
	rawBody []byte // with chunk framing
	body    []byte // decoded
}

// readRawMessage reads one HTTP/1.1 message without net/http's
// interpretation, so that hop-by-hop headers and chunk extensions are seen
// as sent. A response without Content-Length or chunking reads to EOF.
func readRawMessage(br *bufio.Reader, isResponse bool) (rawMessage, error) {
	tp := textproto.NewReader(br)
	var m rawMessage
	var err error
	if m.first, err = tp.ReadLine(); err != nil {
		return m, err
	}
	if m.header, err = tp.ReadMIMEHeader(); err != nil {
		return m, err
	}
	switch {
	case strings.EqualFold(m.header.Get("Transfer-Encoding"), "chunked"):
		var raw, body bytes.Buffer
		for {
			line, err := tp.ReadLine()
			if err != nil {
				return m, err
			}
			raw.WriteString(line + "\r\n")
			sizeHex, _, _ := strings.Cut(line, ";")
			size, err := strconv.ParseInt(strings.TrimSpace(sizeHex), 16, 64)
			if err != nil {
				return m, fmt.Errorf("bad chunk line %q", line)
			}
			if size == 0 {
				break
			}
			chunk := make([]byte, size+2)
			if _, err := io.ReadFull(br, chunk); err != nil {
				return m, err
			}
			raw.Write(chunk)
			body.Write(chunk[:size])
		}
		for { // trailer section
			line, err := tp.ReadLine()
			if err != nil {
				return m, err
			}
			raw.WriteString(line + "\r\n")
			if line == "" {
				break
			}
		}
		m.rawBody, m.body = raw.Bytes(), body.Bytes()
	case m.header.Get("Content-Length") != "":
		n, err := strconv.Atoi(m.header.Get("Content-Length"))
		if err != nil {
			return m, err
		}
		m.body = make([]byte, n)
		if _, err := io.ReadFull(br, m.body); err != nil {
			return m, err
		}
		m.rawBody = m.body
	case isResponse:
		m.body, err = io.ReadAll(br)
		m.rawBody = m.body
		return m, err
	}
	return m, nil
}

// rawUpstream is an HTTP/1.1 server that records requests exactly as they
// arrive and answers each with a raw response the test provides.
type rawUpstream struct {
	ln    net.Listener
	reqs  chan rawMessage
	resps chan string
	done  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func startRawUpstream(t testing.TB) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{ln: ln, reqs: make(chan rawMessage, 1), resps: make(chan string, 1), done: make(chan struct{}), conns: map[net.Conn]bool{}}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns[c] = true
			u.mu.Unlock()
			u.wg.Add(1)
			go u.serve(c)
		}
	}()
	t.Cleanup(func() {
		close(u.done)
		ln.Close()
		u.mu.Lock()
		for c := range u.conns {
			c.Close()
		}
		u.mu.Unlock()
		u.wg.Wait()
	})
	return u
}

func (u *rawUpstream) serve(c net.Conn) {
	defer u.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		m, err := readRawMessage(br, false)
		if err != nil {
			return
		}
		select {
		case u.reqs <- m:
		case <-u.done:
			return
		}
		select {
		case resp := <-u.resps:
			if _, err := io.WriteString(c, resp); err != nil {
				return
			}
		case <-u.done:
			return
		}
	}
}

// TestHTTPHopByHop sends raw HTTP/1.1 requests carrying hop-by-hop headers
// through the proxy to a raw upstream answering with hop-by-hop headers, and
// requires that none of them crosses the proxy in either direction
// (RFC 9110 §7.6.1), while end-to-end headers do.
func TestHTTPHopByHop(t *testing.T) {
	up := startRawUpstream(t)
	p := startProxy(t, singleRouteSpec(routes.UpstreamHTTP, up.ln.Addr().String()))
	proxyAddr := p.Addr("http").String()

	cases := []struct {
		name    string
		reqHdr  []string // raw request header lines
		reqBody string   // raw, after the head ("" with no body)
		respHdr []string // raw response header lines besides framing
		gone    []string // headers that must reach neither the upstream nor the client
		reqKept http.Header
	}{
		{
			name:    "Connection and the headers it names",
			reqHdr:  []string{"Connection: X-Secret", "X-Secret: s3cr3t", "X-Public: p"},
			respHdr: []string{"Connection: X-Secret", "X-Secret: s3cr3t", "X-Public: p"},
			gone:    []string{"Connection", "X-Secret"},
			reqKept: http.Header{"X-Public": {"p"}},
		},
		{
			name:    "Connection naming several headers in several lines",
			reqHdr:  []string{"Connection: keep-alive, X-A ,x-b", "Connection: X-C", "X-A: 1", "X-B: 2", "X-C: 3", "X-D: 4"},
			respHdr: []string{"Connection: X-A, X-B", "Connection: x-c", "X-A: 1", "X-B: 2", "X-C: 3", "X-D: 4"},
			gone:    []string{"Connection", "X-A", "X-B", "X-C"},
			reqKept: http.Header{"X-D": {"4"}},
		},
		{
			name:    "Keep-Alive",
			reqHdr:  []string{"Keep-Alive: timeout=5, max=100"},
			respHdr: []string{"Keep-Alive: timeout=5, max=100"},
			gone:    []string{"Keep-Alive"},
		},
		{
			name:    "Proxy-Connection",
			reqHdr:  []string{"Proxy-Connection: keep-alive"},
			respHdr: []string{"Proxy-Connection: keep-alive"},
			gone:    []string{"Proxy-Connection"},
		},
		{
			name:    "Proxy-Authorization and Proxy-Authenticate",
			reqHdr:  []string{"Proxy-Authorization: Basic dXNlcjpwYXNz", "Authorization: Bearer end-to-end"},
			respHdr: []string{"Proxy-Authenticate: Basic realm=\"proxy\"", "WWW-Authenticate: Bearer"},
			gone:    []string{"Proxy-Authorization", "Proxy-Authenticate"},
			reqKept: http.Header{"Authorization": {"Bearer end-to-end"}},
		},
		{
			name:    "TE other than trailers",
			reqHdr:  []string{"TE: gzip, deflate;q=0.5"},
			respHdr: []string{"TE: gzip"},
			gone:    []string{"Te"},
		},
		{
			name:    "TE trailers is kept alone",
			reqHdr:  []string{"TE: gzip, trailers"},
			reqKept: http.Header{"Te": {"trailers"}},
		},
		{
			name:    "Upgrade without Connection: upgrade",
			reqHdr:  []string{"Upgrade: websocket"},
			respHdr: []string{"Upgrade: h2c"},
			gone:    []string{"Upgrade"},
		},
		{
			name:    "Transfer-Encoding is re-framed, not forwarded",
			reqHdr:  []string{"Transfer-Encoding: chunked"},
			reqBody: "5;ext=client\r\nhello\r\n6;ext=client\r\n world\r\n0\r\n\r\n",
			// The response is chunked too (see below), with extensions.
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-End-To-End: yes\r\n"
			for _, l := range tc.respHdr {
				resp += l + "\r\n"
			}
			resp += "Transfer-Encoding: chunked\r\n\r\n3;ext=upstream\r\nabc\r\n0\r\n\r\n"
			up.resps <- resp

			c, err := net.DialTimeout("tcp", proxyAddr, waitLong)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			method := "GET"
			if tc.reqBody != "" {
				method = "POST"
			}
			req := method + " /hop HTTP/1.1\r\nHost: hop.example.test\r\n"
			for _, l := range tc.reqHdr {
				req += l + "\r\n"
			}
			req += "\r\n" + tc.reqBody
			if _, err := io.WriteString(c, req); err != nil {
				t.Fatal(err)
			}

			var got rawMessage
			select {
			case got = <-up.reqs:
			case <-time.After(waitLong):
				select {
				case <-up.resps: // nobody will take it
				default:
				}
				t.Fatal("request never reached the upstream")
			}
			for _, k := range tc.gone {
				if v, ok := got.header[k]; ok {
					t.Errorf("upstream received %s: %q", k, v)
				}
			}
			for k, v := range tc.reqKept {
				if !reflect.DeepEqual(got.header[k], v) {
					t.Errorf("upstream received %s: %q, want %q", k, got.header[k], v)
				}
			}
			if got.header.Get("Connection") != "" {
				t.Errorf("upstream received Connection: %q", got.header.Values("Connection"))
			}
			if tc.reqBody != "" {
				if string(got.body) != "hello world" {
					t.Errorf("upstream received body %q, want %q", got.body, "hello world")
				}
				if bytes.Contains(got.rawBody, []byte("ext=")) {
					t.Errorf("client's chunk framing reached the upstream: %q", got.rawBody)
				}
			}

			m, err := readRawMessage(bufio.NewReader(c), true)
			if err != nil {
				t.Fatalf("reading the proxy's response: %v", err)
			}
			if m.first != "HTTP/1.1 200 OK" {
				t.Fatalf("status line %q", m.first)
			}
			for _, k := range tc.gone {
				if v, ok := m.header[k]; ok {
					t.Errorf("client received %s: %q", k, v)
				}
			}
			if m.header.Get("Connection") != "" {
				t.Errorf("client received Connection: %q", m.header.Values("Connection"))
			}
			if m.header.Get("X-End-To-End") != "yes" {
				t.Errorf("end-to-end response header lost: %v", m.header)
			}
			for _, l := range tc.respHdr {
				k, v, _ := strings.Cut(l, ":")
				k = textproto.CanonicalMIMEHeaderKey(k)
				if slices.Contains(tc.gone, k) {
					continue
				}
				// Not hop-by-hop (and not named by Connection): passes.
				if !slices.Contains(m.header.Values(k), strings.TrimSpace(v)) {
					t.Errorf("client lost response header %s: %q (got %q)", k, strings.TrimSpace(v), m.header.Values(k))
				}
			}
			if string(m.body) != "abc" {
				t.Errorf("client body %q, want %q", m.body, "abc")
			}
			if bytes.Contains(m.rawBody, []byte("ext=")) {
				t.Errorf("upstream's chunk framing reached the client: %q", m.rawBody)
			}
		})
	}
}

// forwardedView is what the upstream of TestHTTPForwardedHeaders reports.
type forwardedView struct {
	Host      string
	XFF       []string
	XFHost    []string
	XFProto   []string
	Forwarded []string
}

// TestHTTPForwardedHeaders checks X-Forwarded-* and Forwarded: from an
// untrusted client they are replaced by the proxy's own values; from a
// client inside the listener's trusted_proxies the chain is kept and
// extended. The upstream always sees its own address as Host.
func TestHTTPForwardedHeaders(t *testing.T) {
	up := startHTTPUpstream(t, protoHTTP1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(forwardedView{
			Host:      r.Host,
			XFF:       r.Header.Values("X-Forwarded-For"),
			XFHost:    r.Header.Values("X-Forwarded-Host"),
			XFProto:   r.Header.Values("X-Forwarded-Proto"),
			Forwarded: r.Header.Values("Forwarded"),
		})
	}), nil)
	endpoint := hostPort(up)
	listeners := map[string][]string{
		"untrusted":     nil,
		"trusted-cidr":  {"127.0.0.0/8"},
		"trusted-ip":    {"10.1.2.3", "127.0.0.1"},
		"trusted-other": {"10.0.0.0/8", "::1/128"},
	}
	spec := &routes.Spec{Upstreams: []routes.Upstream{{Name: "up", Protocol: routes.UpstreamHTTP, Endpoints: []string{endpoint}}}}
	for _, name := range slices.Sorted(maps.Keys(listeners)) {
		spec.Listeners = append(spec.Listeners, routes.Listener{Name: name, Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP, TrustedProxies: listeners[name]})
		spec.Routes = append(spec.Routes, routes.Route{Name: name, Listener: name, Upstream: "up"})
	}
	p := startProxy(t, spec)

	claims := http.Header{
		"X-Forwarded-For":   {"1.2.3.4"},
		"X-Forwarded-Host":  {"orig.example.test"},
		"X-Forwarded-Proto": {"https"},
		"Forwarded":         {"for=1.2.3.4;host=orig.example.test;proto=https"},
	}
	const own = "" // placeholder for "the Host the client sent"
	cases := []struct {
		name     string
		listener string
		host     string // request Host; "" = the proxy's address
		header   http.Header
		want     forwardedView // XFHost own → the Host the client sent
	}{
		{"untrusted without headers", "untrusted", "", nil,
			forwardedView{XFF: []string{"127.0.0.1"}, XFHost: []string{own}, XFProto: []string{"http"}}},
		{"untrusted claims are replaced", "untrusted", "", claims,
			forwardedView{XFF: []string{"127.0.0.1"}, XFHost: []string{own}, XFProto: []string{"http"}}},
		{"untrusted claims are replaced with a client-chosen Host", "untrusted", "api.example.test", claims,
			forwardedView{XFF: []string{"127.0.0.1"}, XFHost: []string{own}, XFProto: []string{"http"}}},
		{"untrusted multi-line X-Forwarded-For is replaced", "untrusted", "",
			http.Header{"X-Forwarded-For": {"1.2.3.4", "5.6.7.8"}},
			forwardedView{XFF: []string{"127.0.0.1"}, XFHost: []string{own}, XFProto: []string{"http"}}},
		{"trusted CIDR keeps and extends the chain", "trusted-cidr", "api.example.test", claims,
			forwardedView{XFF: []string{"1.2.3.4, 127.0.0.1"}, XFHost: []string{"orig.example.test"}, XFProto: []string{"https"},
				Forwarded: claims["Forwarded"]}},
		{"trusted CIDR folds a multi-line chain", "trusted-cidr", "",
			http.Header{"X-Forwarded-For": {"1.2.3.4", "5.6.7.8, 9.9.9.9"}},
			forwardedView{XFF: []string{"1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"}, XFHost: []string{own}, XFProto: []string{"http"}}},
		{"trusted without headers sets fresh values", "trusted-cidr", "api.example.test", nil,
			forwardedView{XFF: []string{"127.0.0.1"}, XFHost: []string{own}, XFProto: []string{"http"}}},
		{"trusted bare IP", "trusted-ip", "", claims,
			forwardedView{XFF: []string{"1.2.3.4, 127.0.0.1"}, XFHost: []string{"orig.example.test"}, XFProto: []string{"https"},
				Forwarded: claims["Forwarded"]}},
		{"trusted list without the client is untrusted", "trusted-other", "", claims,
			forwardedView{XFF: []string{"127.0.0.1"}, XFHost: []string{own}, XFProto: []string{"http"}}},
	}
	for _, clientProto := range []string{protoHTTP1, protoH2C} {
		client := newHTTPClient(t, clientProto)
		for _, tc := range cases {
			t.Run(clientProto+" client/"+tc.name, func(t *testing.T) {
				req, _ := http.NewRequest("GET", proxyURL(p, tc.listener)+"/fwd", nil)
				sentHost := p.Addr(tc.listener).String()
				if tc.host != "" {
					req.Host = tc.host
					sentHost = tc.host
				}
				maps.Copy(req.Header, tc.header)
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				var got forwardedView
				if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
					t.Fatalf("status %d: %v", resp.StatusCode, err)
				}
				want := tc.want
				want.Host = endpoint
				want.XFHost = slices.Clone(want.XFHost)
				for i, v := range want.XFHost {
					if v == own {
						want.XFHost[i] = sentHost
					}
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("upstream saw\n %+v\nwant\n %+v", got, want)
				}
			})
		}
	}
}

// namedUpstream answers with its name and counts what it receives.
type namedUpstream struct {
	name string
	srv  *httptest.Server
	mu   sync.Mutex
	hits int
}

func startNamed(t testing.TB, name string) *namedUpstream {
	u := &namedUpstream{name: name}
	u.srv = startHTTPUpstream(t, protoHTTP1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.hits++
		u.mu.Unlock()
		io.WriteString(w, u.name)
	}), nil)
	return u
}

func (u *namedUpstream) takeHits() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := u.hits
	u.hits = 0
	return n
}

// TestHTTPRouting checks route matching on an HTTP listener (path prefix,
// method, host, headers, first match in file order) and that a request no
// route matches gets the proxy's 404 and reaches no upstream.
func TestHTTPRouting(t *testing.T) {
	ups := map[string]*namedUpstream{}
	spec := &routes.Spec{Listeners: []routes.Listener{{Name: "http", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}}}
	for _, name := range []string{"kb-write", "api", "tenant", "kb-read"} {
		ups[name] = startNamed(t, name)
		spec.Upstreams = append(spec.Upstreams, routes.Upstream{Name: name, Protocol: routes.UpstreamHTTP, Endpoints: []string{hostPort(ups[name].srv)}})
	}
	spec.Routes = []routes.Route{
		{Name: "kb-write", Listener: "http", Match: routes.Match{PathPrefix: "/kb/", Method: "POST"}, Upstream: "kb-write"},
		{Name: "api", Listener: "http", Match: routes.Match{Host: "api.example.test"}, Upstream: "api"},
		{Name: "tenant", Listener: "http", Match: routes.Match{Headers: map[string]string{"X-Tenant": "blue"}}, Upstream: "tenant"},
		{Name: "kb-read", Listener: "http", Match: routes.Match{PathPrefix: "/kb/"}, Upstream: "kb-read"},
	}
	p := startProxy(t, spec)
	base := proxyURL(p, "http")

	cases := []struct {
		name   string
		method string
		path   string
		host   string
		header http.Header
		want   string // upstream name; "" = 404 from the proxy
	}{
		{"path prefix and method", "POST", "/kb/search", "", nil, "kb-write"},
		{"path prefix, other method falls through", "GET", "/kb/search", "", nil, "kb-read"},
		{"first match wins over host", "POST", "/kb/search", "api.example.test", nil, "kb-write"},
		{"host before a later path route", "GET", "/kb/search", "api.example.test", nil, "api"},
		{"host ignores case and port", "GET", "/anything", "API.Example.TEST:8443", nil, "api"},
		{"header", "GET", "/anything", "", http.Header{"X-Tenant": {"blue"}}, "tenant"},
		{"header beats later path route", "DELETE", "/kb/x", "", http.Header{"X-Tenant": {"blue"}}, "tenant"},
		{"header with another value", "GET", "/anything", "", http.Header{"X-Tenant": {"red"}}, ""},
		{"other host", "GET", "/anything", "www.example.test", nil, ""},
		{"no route", "GET", "/anything", "", nil, ""},
		{"no route with a body", "POST", "/anything", "", nil, ""},
		{"prefix needs its trailing slash", "GET", "/kb", "", nil, ""},
		{"prefix is case-sensitive", "GET", "/KB/search", "", nil, ""},
		{"prefix is not a string prefix of a segment", "POST", "/kbx/search", "", nil, ""},
	}
	for _, clientProto := range []string{protoHTTP1, protoH2C} {
		client := newHTTPClient(t, clientProto)
		for _, tc := range cases {
			t.Run(clientProto+" client/"+tc.name, func(t *testing.T) {
				var body io.Reader
				if tc.method == "POST" {
					body = strings.NewReader(`{"q":"x"}`)
				}
				req, _ := http.NewRequest(tc.method, base+tc.path, body)
				if tc.host != "" {
					req.Host = tc.host
				}
				maps.Copy(req.Header, tc.header)
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				hits := map[string]int{}
				for name, u := range ups {
					if n := u.takeHits(); n > 0 {
						hits[name] = n
					}
				}
				if tc.want == "" {
					wantBody := "hopwatch: no route for " + tc.method + " " + tc.path + "\n"
					if resp.StatusCode != http.StatusNotFound || string(b) != wantBody {
						t.Errorf("got %d %q, want 404 %q", resp.StatusCode, b, wantBody)
					}
					if len(hits) != 0 {
						t.Errorf("unrouted request reached upstreams: %v", hits)
					}
					return
				}
				if resp.StatusCode != http.StatusOK || string(b) != tc.want {
					t.Errorf("got %d %q, want 200 from %s", resp.StatusCode, b, tc.want)
				}
				if !reflect.DeepEqual(hits, map[string]int{tc.want: 1}) {
					t.Errorf("upstream hits %v, want one on %s", hits, tc.want)
				}
			})
		}
	}
}

// blockingUpstream holds every request until its context ends (or the test
// ends), reporting arrival and cancellation.
type blockingUpstream struct {
	srv      *httptest.Server
	arrived  chan struct{}
	canceled chan struct{}
}

func startBlocking(t testing.TB, proto string) *blockingUpstream {
	b := &blockingUpstream{arrived: make(chan struct{}, 16), canceled: make(chan struct{}, 16)}
	done := make(chan struct{})
	b.srv = startHTTPUpstream(t, proto, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fast" {
			io.WriteString(w, "fast")
			return
		}
		b.arrived <- struct{}{}
		select {
		case <-r.Context().Done():
			b.canceled <- struct{}{}
		case <-done:
		}
	}), nil)
	// Registered after the server's own cleanup, so it runs first and
	// lets handlers return before the server waits for them.
	t.Cleanup(func() { close(done) })
	return b
}

// TestHTTPRouteTimeout checks that a route timeout on an HTTP listener
// answers 504 when the upstream is slower, cancels the upstream request,
// and leaves faster requests alone. The fast case runs on a route with a
// generous timeout, so that no case depends on how fast the machine is.
func TestHTTPRouteTimeout(t *testing.T) {
	for _, upProto := range []string{protoHTTP1, protoH2C} {
		for _, clientProto := range []string{protoHTTP1, protoH2C} {
			t.Run(upProto+" upstream/"+clientProto+" client", func(t *testing.T) {
				up := startBlocking(t, upProto)
				spec := singleRouteSpec(upstreamProtocol(upProto), hostPort(up.srv))
				spec.Routes = []routes.Route{
					{Name: "short", Listener: "http", Match: routes.Match{PathPrefix: "/slow"}, Upstream: "up", Timeout: 300 * time.Millisecond},
					{Name: "long", Listener: "http", Upstream: "up", Timeout: time.Minute},
				}
				p := startProxy(t, spec)
				client := newHTTPClient(t, clientProto)
				cases := []struct {
					name       string
					path       string
					wantStatus int
					wantCancel bool
				}{
					{"upstream slower than the timeout", "/slow", http.StatusGatewayTimeout, true},
					{"upstream within the timeout", "/fast", http.StatusOK, false},
				}
				for _, tc := range cases {
					t.Run(tc.name, func(t *testing.T) {
						ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
						defer cancel()
						req, _ := http.NewRequestWithContext(ctx, "GET", proxyURL(p, "http")+tc.path, nil)
						resp, err := client.Do(req)
						if err != nil {
							t.Fatal(err)
						}
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode != tc.wantStatus {
							t.Fatalf("status %d %q, want %d", resp.StatusCode, b, tc.wantStatus)
						}
						if !tc.wantCancel {
							return
						}
						if !strings.HasPrefix(string(b), "hopwatch: ") {
							t.Errorf("504 body %q does not name the proxy", b)
						}
						select {
						case <-up.canceled:
						case <-time.After(waitLong):
							t.Fatal("upstream request still running after the route timeout")
						}
					})
				}
			})
		}
	}
}

// TestHTTPClientCancel checks that a client going away cancels the request
// the proxy made upstream.
func TestHTTPClientCancel(t *testing.T) {
	for _, upProto := range []string{protoHTTP1, protoH2C} {
		for _, clientProto := range []string{protoHTTP1, protoH2C} {
			t.Run(upProto+" upstream/"+clientProto+" client", func(t *testing.T) {
				up := startBlocking(t, upProto)
				p := startProxy(t, singleRouteSpec(upstreamProtocol(upProto), hostPort(up.srv)))
				client := newHTTPClient(t, clientProto)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "GET", proxyURL(p, "http")+"/slow", nil)
				errc := make(chan error, 1)
				go func() {
					resp, err := client.Do(req)
					if err == nil {
						resp.Body.Close()
					}
					errc <- err
				}()
				select {
				case <-up.arrived:
				case <-time.After(waitLong):
					t.Fatal("request never reached the upstream")
				}
				cancel()
				select {
				case <-up.canceled:
				case <-time.After(waitLong):
					t.Fatal("upstream request not canceled after the client canceled")
				}
				if err := <-errc; !errors.Is(err, context.Canceled) {
					t.Errorf("client got %v, want context.Canceled", err)
				}
			})
		}
	}
}
