package proxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/textproto"
	"reflect"
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/routes"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// validFieldValue is what net/http's server lets through as a header
// value (RFC 9110 §5.5): no CR, LF, NUL or other controls but tab.
func validFieldValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// FuzzForwardedHeaders drives the HTTP route's reverse proxy with
// arbitrary client headers and checks what reaches the upstream: hop-by-
// hop headers and those the client's Connection names are gone (RFC 9110
// §7.6.1); from an untrusted peer no Forwarded and exactly one
// X-Forwarded-For, its own address; from a trusted one its chain, extended
// by its address; Host is the upstream's; and the inbound request is
// never modified.
func FuzzForwardedHeaders(f *testing.F) {
	f.Add("10.1.2.3", "203.0.113.9", "for=203.0.113.9", "X-Custom", "x-custom, keep-alive", "evil.example", "https")
	f.Add("192.0.2.1", "127.0.0.1", "for=127.0.0.1;proto=https", "Upgrade", "upgrade", "", "")
	f.Add("::1", "", "", "X-Forwarded-For", "X-Forwarded-For", "", "")
	f.Add("10.0.0.1", "1.1.1.1, 2.2.2.2", "", "Te", "te, close", "a", "ws")
	f.Add("fe80::1%eth0", "", "", "X-Custom", "", "", "")                // zoned peer: no zone upstream
	f.Add("::ffff:10.1.2.3%eth0", "1.1.1.1", "", "X-Custom", "", "", "") // a trusted peer, mapped and zoned
	trusted := parseTrusted([]string{"10.0.0.0/8"})
	var sent *http.Request
	up := &upstream{spec: routes.Upstream{Name: "up"}}
	transport := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		sent = r
		return &http.Response{StatusCode: 200, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	})
	rp := newReverseProxy(up, transport, trusted, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	f.Fuzz(func(t *testing.T, ip, xff, fwd, custom, connection, xfh, xfp string) {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return
		}
		for _, v := range []string{xff, fwd, connection, xfh, xfp, custom} {
			if !validFieldValue(v) {
				return
			}
		}
		name := http.CanonicalHeaderKey(custom)
		if name == "" || strings.ContainsAny(name, " \t:()<>@,;\\\"/[]?={}") || name == "Host" {
			return
		}
		in := httptest.NewRequest("GET", "http://kb.internal/kb/x", nil)
		in.RemoteAddr = netip.AddrPortFrom(addr, 5555).String()
		for k, v := range map[string]string{"X-Forwarded-For": xff, "Forwarded": fwd, "Connection": connection,
			"X-Forwarded-Host": xfh, "X-Forwarded-Proto": xfp, name: "v", "Keep-Alive": "timeout=5", "Proxy-Connection": "keep-alive"} {
			if v != "" {
				in.Header.Set(k, v)
			}
		}
		before := in.Header.Clone()
		sent = nil
		rp.ServeHTTP(httptest.NewRecorder(), in)
		if sent == nil {
			return // refused before forwarding: nothing to check
		}
		if !reflect.DeepEqual(in.Header, before) {
			t.Fatalf("inbound headers modified:\n%v\n%v", before, in.Header)
		}
		out := sent.Header
		// A protocol upgrade (WebSocket) keeps Connection: Upgrade and
		// Upgrade, rebuilt by the proxy, and nothing else of Connection.
		upgrade := in.Header.Get("Upgrade") != "" && slicesContainsFold(strings.Split(connection, ","), "upgrade")
		for _, h := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding"} {
			if _, ok := out[h]; ok && !(upgrade && h == "Connection" && out.Get(h) == "Upgrade") {
				t.Fatalf("hop-by-hop %s: %q forwarded", h, out.Values(h))
			}
		}
		// The peer as upstreams compare it: IPv4 unmapped, no IPv6 zone
		// (an interface of this host). A peer address net cannot split
		// (a zone with brackets, which no interface name has) gets no
		// entry at all.
		client := addr.WithZone("").Unmap().String()
		if _, _, err := net.SplitHostPort(in.RemoteAddr); err != nil {
			client = ""
		}
		isTrusted := client != "" && trusted[0].Contains(addr.WithZone("").Unmap())
		for _, tok := range strings.Split(connection, ",") {
			// Tokens are trimmed of OWS (RFC 9110 §5.6.3: space and
			// tab) as net/http does, not of Unicode spaces:
			// "0\u2005" names no header "0".
			tok = http.CanonicalHeaderKey(textproto.TrimString(tok))
			if tok == "" || upgrade && tok == "Upgrade" || tok == "X-Forwarded-For" || tok == "X-Forwarded-Host" || tok == "X-Forwarded-Proto" || tok == "Forwarded" && isTrusted {
				continue // set by the proxy itself (or kept from a trusted peer)
			}
			if _, ok := out[tok]; ok && !strings.EqualFold(tok, "te") {
				t.Fatalf("%s named in Connection %q was forwarded", tok, connection)
			}
		}
		got := strings.Join(out.Values("X-Forwarded-For"), ", ")
		if !isTrusted {
			if got != client {
				t.Fatalf("untrusted X-Forwarded-For = %q, want %q", got, client)
			}
			if _, ok := out["Forwarded"]; ok {
				t.Fatal("untrusted Forwarded forwarded")
			}
			if out.Get("X-Forwarded-Host") != "kb.internal" || out.Get("X-Forwarded-Proto") != "http" {
				t.Fatalf("untrusted X-Forwarded-Host/Proto = %q/%q", out.Get("X-Forwarded-Host"), out.Get("X-Forwarded-Proto"))
			}
		} else if !strings.HasSuffix(got, client) {
			t.Fatalf("trusted X-Forwarded-For = %q does not end with %q", got, client)
		}
		if sent.Host != "" || sent.URL.Host != "up" {
			t.Fatalf("Host %q, URL host %q", sent.Host, sent.URL.Host)
		}
	})
}

func slicesContainsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(strings.TrimSpace(v), s) {
			return true
		}
	}
	return false
}

// TestPeerAddressForms: the trust check and the X-Forwarded-For entry see
// a peer the way an allow list names it, whatever form the listener got
// it in: IPv4-mapped IPv6 is IPv4, an IPv6 zone (this host's interface)
// is dropped, and an address net cannot split is neither trusted nor
// written.
func TestPeerAddressForms(t *testing.T) {
	trusted := parseTrusted([]string{"10.0.0.0/8", "fe80::/10"})
	for _, tc := range []struct {
		name, remote, wantXFF string
		wantTrusted           bool
	}{
		{"IPv4", "10.1.2.3:5555", "10.1.2.3", true},
		{"IPv4-mapped", "[::ffff:10.1.2.3]:5555", "10.1.2.3", true},
		{"link-local with zone", "[fe80::1%eth0]:5555", "fe80::1", true},
		{"mapped with zone", "[::ffff:10.1.2.3%eth0]:5555", "10.1.2.3", true},
		{"untrusted with zone", "[2001:db8::1%eth0]:5555", "2001:db8::1", false},
		{"unsplittable", "[::%[]:5555", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := isTrusted(tc.remote, trusted); got != tc.wantTrusted {
				t.Errorf("isTrusted(%q) = %v, want %v", tc.remote, got, tc.wantTrusted)
			}
			h := http.Header{}
			if host, _, err := net.SplitHostPort(tc.remote); err == nil {
				h.Set("X-Forwarded-For", "192.0.2.1, "+host) // as SetXForwarded appends it
			}
			unmapForwardedFor(h, tc.remote)
			want := ""
			if tc.wantXFF != "" {
				want = "192.0.2.1, " + tc.wantXFF
			}
			if got := h.Get("X-Forwarded-For"); got != want {
				t.Errorf("X-Forwarded-For = %q, want %q", got, want)
			}
		})
	}
}
