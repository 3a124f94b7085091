package routes

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// Header reads one request header or gRPC metadata value by lowercase name.
// http.Header satisfies it (Get canonicalizes); gRPC metadata needs an adapter.
type Header interface {
	Get(key string) string
}

// Request is what a route can match on. For gRPC, Path is the full method
// ("/pkg.Service/Method") and Method is "POST". For HTTP, Path is the path
// exactly as it is forwarded (percent-encoded, as on the request line), and
// the listener has checked it with CheckPath first: the route decision and
// the upstream see one and the same string.
type Request struct {
	Host   string
	Path   string
	Method string
	Header Header
}

// Table is a compiled, immutable route table. First match wins, in file order.
type Table struct {
	byListener map[string][]compiled
}

type compiled struct {
	index      int
	pathPrefix string // also derived from grpc_service
	exactPath  string // from grpc_method
	host       string
	method     string
	headers    []headerMatch
}

type headerMatch struct{ name, value string }

// ErrInvalid is wrapped by Compile when the spec does not validate.
var ErrInvalid = errors.New("invalid routing configuration")

// Compile validates s and builds its Table. Route indexes returned by Match
// are indexes into s.Routes.
func Compile(s *Spec) (*Table, error) {
	if errs := Validate(s); len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		return nil, fmt.Errorf("%w: %s", ErrInvalid, strings.Join(msgs, "; "))
	}
	t := &Table{byListener: make(map[string][]compiled, len(s.Listeners))}
	for i, r := range s.Routes {
		c := compiled{
			index:      i,
			pathPrefix: r.Match.PathPrefix,
			exactPath:  r.Match.GRPCMethod,
			host:       canonicalMatchHost(r.Match.Host),
			method:     r.Match.Method,
		}
		if r.Match.GRPCService != "" {
			c.pathPrefix = "/" + r.Match.GRPCService + "/"
		}
		for k, v := range r.Match.Headers {
			c.headers = append(c.headers, headerMatch{name: strings.ToLower(k), value: v})
		}
		t.byListener[r.Listener] = append(t.byListener[r.Listener], c)
	}
	return t, nil
}

// Match returns the index of the first route on listener that matches req,
// or -1. It does not allocate.
func (t *Table) Match(listener string, req *Request) int {
	for i := range t.byListener[listener] {
		c := &t.byListener[listener][i]
		if c.matches(req) {
			return c.index
		}
	}
	return -1
}

func (c *compiled) matches(req *Request) bool {
	if c.exactPath != "" && req.Path != c.exactPath {
		return false
	}
	if c.pathPrefix != "" && !strings.HasPrefix(req.Path, c.pathPrefix) {
		return false
	}
	if c.method != "" && req.Method != c.method {
		return false
	}
	if c.host != "" && !strings.EqualFold(canonicalRequestHost(req.Host), c.host) {
		return false
	}
	for _, h := range c.headers {
		if req.Header == nil || req.Header.Get(h.name) != h.value {
			return false
		}
	}
	return true
}

// canonicalRequestHost is the host part of a Host header or :authority as
// routes compare it: no port, no brackets, no trailing dot. "kb.internal.",
// "KB.internal:8080" and "kb.internal" name one host (RFC 1034 §3.1: the
// trailing dot only says the name is absolute; RFC 9110 §4.2.3: hosts
// compare case-insensitively), so they must select one route; otherwise a
// client picks another route by spelling the host differently.
func canonicalRequestHost(host string) string {
	return strings.TrimSuffix(hostOnly(host), ".")
}

// canonicalMatchHost is canonicalRequestHost for the host written in a
// match block.
func canonicalMatchHost(host string) string {
	return strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
}

// hostOnly strips a port from host, keeping IPv6 literals intact.
func hostOnly(host string) string {
	if !strings.Contains(host, ":") {
		return host
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.Trim(host, "[]")
}

// Why a request path is refused before any route is consulted. They all
// wrap ErrAmbiguousPath, which the listeners answer with 400 Bad Request
// (gRPC: INVALID_ARGUMENT), never forwarding the request.
var (
	// ErrAmbiguousPath: the path could mean another path to the upstream
	// than the one the route was chosen for.
	ErrAmbiguousPath = errors.New("ambiguous request path")

	errNotOriginForm    = fmt.Errorf("%w: not an absolute path", ErrAmbiguousPath)
	errNetworkPath      = fmt.Errorf("%w: starts with '//'", ErrAmbiguousPath)
	errDotSegment       = fmt.Errorf("%w: dot-segment", ErrAmbiguousPath)
	errEncodedSeparator = fmt.Errorf("%w: encoded '/', '\\' or NUL", ErrAmbiguousPath)
	errBackslash        = fmt.Errorf("%w: backslash", ErrAmbiguousPath)
	errControl          = fmt.Errorf("%w: control character", ErrAmbiguousPath)
	errBadEscape        = fmt.Errorf("%w: malformed percent-encoding", ErrAmbiguousPath)
	errGRPCMethod       = fmt.Errorf("%w: not a gRPC method (/package.Service/Method)", ErrAmbiguousPath)
)

// CheckPath accepts a request path, percent-encoded as on the request line,
// only when every upstream reads it as the same path that routes match:
//
//   - it starts with '/' (origin-form; CONNECT's authority-form and
//     OPTIONS' "*" carry no path to route on);
//   - no segment is a dot-segment, "." or "..", also when written with
//     %2e, and also before a ';' path parameter ("..;x": Tomcat and Spring
//     read it as ".."). A proxy that matched "/kb/" on "/kb/../admin" and
//     forwarded it would let the upstream's RFC 3986 §5.2.4 normalisation
//     walk out of the prefix;
//   - no encoded separator: %2F ('/'), %5C ('\') or %00 (NUL), which many
//     servers decode before splitting the path, so that "/kb/..%2Fadmin"
//     becomes "/kb/../admin" behind the proxy's back;
//   - no raw '\' (Windows servers and some frameworks read it as '/'), no
//     control characters, no malformed escapes;
//   - it does not start with "//": resolved as a URI reference (RFC 3986
//     §4.2, a network-path reference), "//evil.example/x" names the host
//     evil.example, and URL parsers and redirect helpers in many upstream
//     frameworks read it so.
//
// Everything else passes byte for byte: hopwatch does not normalise, it
// refuses what normalisation would change, so the string matched is the
// string forwarded. Empty segments after the first ("/kb//x") are kept:
// they cannot climb out of a prefix. CheckPath does not allocate.
func CheckPath(p string) error {
	if p == "" || p[0] != '/' {
		return errNotOriginForm
	}
	if len(p) > 1 && p[1] == '/' {
		return errNetworkPath
	}
	seg := 1 // start of the current segment
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			if isDotSegment(p[seg:i]) {
				return errDotSegment
			}
			seg = i + 1
			continue
		}
		switch c := p[i]; {
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return errBadEscape
			}
			switch unhex(p[i+1])<<4 | unhex(p[i+2]) {
			case '/', '\\', 0:
				return errEncodedSeparator
			}
			i += 2
		case c == '\\':
			return errBackslash
		case c < 0x20 || c == 0x7f:
			return errControl
		}
	}
	return nil
}

// isDotSegment reports whether seg (still percent-encoded) is "." or ".."
// once decoded, ignoring a ';' path parameter.
func isDotSegment(seg string) bool {
	if i := strings.IndexByte(seg, ';'); i >= 0 {
		seg = seg[:i]
	}
	dots := 0
	for i := 0; i < len(seg); {
		switch {
		case seg[i] == '.':
			i++
		case len(seg)-i >= 3 && seg[i] == '%' && seg[i+1] == '2' && (seg[i+2] == 'e' || seg[i+2] == 'E'):
			i += 3
		default:
			return false
		}
		dots++
	}
	return dots == 1 || dots == 2
}

// CheckGRPCMethod accepts a gRPC request path only in the form the gRPC
// over HTTP/2 spec gives it, "/" service "/" method, with identifiers made
// of letters, digits, '_', '.' and '-' and neither part a dot-segment. grpc-go
// hands "/pkg.Svc/../x" to an unknown-service handler as is (it splits at
// the last '/'), where "/pkg.Svc/" would match it.
func CheckGRPCMethod(m string) error {
	if len(m) < 4 || m[0] != '/' {
		return errGRPCMethod
	}
	svc, name, ok := strings.Cut(m[1:], "/")
	if !ok || !isGRPCName(svc) || !isGRPCName(name) {
		return errGRPCMethod
	}
	return nil
}

func isGRPCName(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
