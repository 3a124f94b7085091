package routes

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"
)

func TestCheckPath(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		ok         bool
	}{
		{"root", "/", true},
		{"plain", "/kb/search", true},
		{"trailing slash", "/kb/", true},
		{"query-free escapes kept", "/kb/caf%C3%A9/a%20b", true},
		{"dots inside a name", "/kb/v1.2/..x/x../...", true},
		{"empty segments", "/kb//search", true},
		{"path parameter", "/kb/a;v=1", true},
		{"encoded other characters", "/kb/%41%3F", true},

		{"empty", "", false},
		{"asterisk", "*", false},
		{"network-path reference", "//evil.example/kb/x", false},
		{"network-path reference, root", "//", false},
		{"authority form", "evil.example:443", false},
		{"dot-dot", "/kb/../admin/secret", false},
		{"dot-dot at end", "/kb/..", false},
		{"dot", "/kb/./x", false},
		{"dot at end", "/kb/.", false},
		{"encoded dot-dot", "/kb/%2e%2e/admin", false},
		{"encoded dot-dot, upper case", "/kb/%2E%2E/admin", false},
		{"half-encoded dot-dot", "/kb/.%2e/admin", false},
		{"encoded dot", "/kb/%2e/admin", false},
		{"dot-dot with a path parameter", "/kb/..;x=1/admin", false},
		{"dot-dot with an empty parameter", "/kb/..;/admin", false},
		{"encoded slash", "/kb/..%2fadmin", false},
		{"encoded slash, upper case", "/kb/a%2Fb", false},
		{"encoded backslash", "/kb/..%5cadmin", false},
		{"encoded NUL", "/kb/a%00.txt", false},
		{"raw backslash", "/kb/..\\admin", false},
		{"control character", "/kb/a\tb", false},
		{"DEL", "/kb/a\x7f", false},
		{"truncated escape", "/kb/a%2", false},
		{"bad escape", "/kb/a%zz", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckPath(tc.path)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckPath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrAmbiguousPath) {
				t.Fatalf("CheckPath(%q) = %v, not ErrAmbiguousPath", tc.path, err)
			}
		})
	}
}

func TestCheckGRPCMethod(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		ok           bool
	}{
		{"method", "/bot.v1.NLU/Parse", true},
		{"no package", "/NLU/Parse_2", true},
		{"dot-dot method", "/bot.v1.NLU/..", false},
		{"dot-dot service", "/../Parse", false},
		{"traversal", "/bot.v1.NLU/../admin.Svc/Get", false},
		{"extra segment", "/bot.v1.NLU/Parse/x", false},
		{"encoded", "/bot.v1.NLU/%2e%2e", false},
		{"no slash", "bot.v1.NLU/Parse", false},
		{"empty method", "/bot.v1.NLU/", false},
		{"empty service", "//Parse", false},
		{"backslash", "/bot.v1.NLU/a\\b", false},
		{"NUL", "/bot.v1.NLU/a\x00", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := CheckGRPCMethod(tc.method); (err == nil) != tc.ok {
				t.Fatalf("CheckGRPCMethod(%q) = %v, want ok=%v", tc.method, err, tc.ok)
			}
		})
	}
}

func TestMatchHost(t *testing.T) {
	s := &Spec{
		Listeners: []Listener{{Name: "web", Address: "127.0.0.1:7080", Protocol: ListenerHTTP}},
		Routes: []Route{
			{Name: "kb", Listener: "web", Match: Match{Host: "KB.internal"}, Upstream: "kb"},
			{Name: "v6", Listener: "web", Match: Match{Host: "::1"}, Upstream: "kb"},
		},
		Upstreams: []Upstream{{Name: "kb", Protocol: UpstreamHTTP, Endpoints: []string{"127.0.0.1:7201"}}},
	}
	tab, err := Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, host string
		want       int
	}{
		{"exact", "kb.internal", 0},
		{"case", "Kb.Internal", 0},
		{"port", "kb.internal:8080", 0},
		{"trailing dot", "kb.internal.", 0},
		{"trailing dot and port", "KB.INTERNAL.:80", 0},
		{"other host", "kb.internal.evil", -1},
		{"suffix", "xkb.internal", -1},
		{"ipv6 with port", "[::1]:7080", 1},
		{"ipv6 bare", "[::1]", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tab.Match("web", &Request{Host: tc.host, Path: "/", Method: "GET"}); got != tc.want {
				t.Fatalf("Match(host %q) = %d, want %d", tc.host, got, tc.want)
			}
		})
	}
}

// FuzzCheckPath holds CheckPath to its promise: a path it accepts means the
// same to an upstream that decodes once and removes dot-segments (RFC 3986
// §5.2.4) as it meant to the route table, so a prefix match cannot be
// escaped.
func FuzzCheckPath(f *testing.F) {
	for _, s := range []string{"/kb/x", "/kb/../a", "/kb/%2e%2e/a", "/kb/..%2fa", "/kb/..;/a", "/a%5cb", "/kb//x", "/%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		if CheckPath(p) != nil {
			return
		}
		dec, err := url.PathUnescape(p)
		if err != nil {
			t.Fatalf("CheckPath accepted %q, which does not decode: %v", p, err)
		}
		if strings.ContainsAny(dec, "\\\x00") {
			t.Fatalf("CheckPath accepted %q, which decodes to %q", p, dec)
		}
		// The decoded path has the same segments as the encoded one, none
		// of them a dot-segment, so cleaning it only folds empty segments.
		if strings.Count(dec, "/") != strings.Count(p, "/") {
			t.Fatalf("CheckPath accepted %q, whose decoding %q has other segments", p, dec)
		}
		for _, seg := range strings.Split(dec, "/") {
			if before, _, _ := strings.Cut(seg, ";"); before == "." || before == ".." {
				t.Fatalf("CheckPath accepted %q with dot-segment %q", p, seg)
			}
		}
		// Whatever prefix (at a segment boundary) a route matched, the
		// upstream's normalised path still starts with it.
		norm := func(s string) string {
			if c := path.Clean(s); c != "/" {
				return c + "/"
			}
			return "/"
		}
		for i := 0; i < len(p); i++ {
			if p[i] != '/' {
				continue
			}
			pfx, _ := url.PathUnescape(p[:i+1])
			if !strings.HasPrefix(norm(dec), norm(pfx)) {
				t.Fatalf("CheckPath accepted %q: matched prefix %q, normalised to %q", p, p[:i+1], norm(dec))
			}
		}
	})
}

// FuzzCheckGRPCMethod: an accepted method is "/" service "/" method with
// neither part a dot-segment nor anything an upstream would decode.
func FuzzCheckGRPCMethod(f *testing.F) {
	for _, s := range []string{"/a.B/C", "/a.B/../C", "/a/%2e", "//x", "/a/b/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, m string) {
		if CheckGRPCMethod(m) != nil {
			return
		}
		parts := strings.Split(m, "/")
		if len(parts) != 3 || parts[0] != "" {
			t.Fatalf("accepted %q with %d parts", m, len(parts))
		}
		for _, p := range parts[1:] {
			if p == "" || p == "." || p == ".." || strings.ContainsAny(p, "%\\;\x00") {
				t.Fatalf("accepted %q with part %q", m, p)
			}
		}
		if CheckPath(m) != nil {
			t.Fatalf("accepted method %q that CheckPath refuses", m)
		}
	})
}
