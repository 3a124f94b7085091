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
// ("/pkg.Service/Method") and Method is "POST".
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
			host:       strings.ToLower(r.Match.Host),
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
	if c.host != "" && !strings.EqualFold(hostOnly(req.Host), c.host) {
		return false
	}
	for _, h := range c.headers {
		if req.Header == nil || req.Header.Get(h.name) != h.value {
			return false
		}
	}
	return true
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
