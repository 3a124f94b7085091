package routes

import (
	"net/http"
	"strings"
	"testing"
)

// fuzzTable is a table whose routes differ in one field each, in an order
// where an earlier, narrower route shadows a later, wider one.
func fuzzTable(t testing.TB) (*Spec, *Table) {
	s := &Spec{
		Listeners: []Listener{{Name: "l", Address: "127.0.0.1:7080", Protocol: ListenerHTTP}},
		Routes: []Route{
			{Name: "kb-acme", Listener: "l", Upstream: "u", Match: Match{Host: "kb.internal", PathPrefix: "/kb/", Method: "POST", Headers: map[string]string{"X-Tenant": "acme"}}},
			{Name: "parse", Listener: "l", Upstream: "u", Match: Match{GRPCMethod: "/bot.v1.NLU/Parse"}},
			{Name: "nlu", Listener: "l", Upstream: "u", Match: Match{GRPCService: "bot.v1.NLU"}},
			{Name: "kb", Listener: "l", Upstream: "u", Match: Match{PathPrefix: "/kb/"}},
			{Name: "v6", Listener: "l", Upstream: "u", Match: Match{Host: "::1"}},
			{Name: "get", Listener: "l", Upstream: "u", Match: Match{Method: "GET", Host: "Web.Internal."}},
		},
		Upstreams: []Upstream{{Name: "u", Protocol: UpstreamHTTP, Endpoints: []string{"127.0.0.1:9"}}},
	}
	tbl, err := Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return s, tbl
}

// FuzzMatch holds Table.Match to what the configuration reference says:
// the route it picks satisfies every field of its match block as written
// (prefix, exact method and gRPC method, header values), and the host is
// compared without case, port or trailing dot, so that no spelling of the
// same host picks another route.
func FuzzMatch(f *testing.F) {
	f.Add("kb.internal", "/kb/x", "POST", "acme")
	f.Add("KB.internal.:8080", "/kb/../x", "POST", "acme")
	f.Add("[::1]:80", "/bot.v1.NLU/Parse", "POST", "")
	f.Add("web.internal", "/", "GET", "")
	f.Add("", "", "", "")
	spec, tbl := fuzzTable(f)
	f.Fuzz(func(t *testing.T, host, path, method, tenant string) {
		h := http.Header{}
		h.Set("X-Tenant", tenant)
		req := Request{Host: host, Path: path, Method: method, Header: h}
		i := tbl.Match("l", &req)
		if i < -1 || i >= len(spec.Routes) {
			t.Fatalf("Match = %d, out of range", i)
		}
		if tbl.Match("other", &req) != -1 {
			t.Fatal("a route of another listener matched")
		}
		if i >= 0 {
			m := spec.Routes[i].Match
			switch {
			case m.PathPrefix != "" && !strings.HasPrefix(path, m.PathPrefix),
				m.GRPCService != "" && !strings.HasPrefix(path, "/"+m.GRPCService+"/"),
				m.GRPCMethod != "" && path != m.GRPCMethod,
				m.Method != "" && method != m.Method,
				m.Headers["X-Tenant"] != "" && tenant != m.Headers["X-Tenant"]:
				t.Fatalf("route %q matched %+v", spec.Routes[i].Name, req)
			}
		}
		// Other spellings of the same host select the same route.
		if host == "" || strings.ContainsAny(host, ":[]") || strings.HasSuffix(host, ".") || !isASCII(host) {
			return
		}
		for _, alt := range []string{strings.ToUpper(host), strings.ToLower(host), host + ".", host + ":8443"} {
			req.Host = alt
			if j := tbl.Match("l", &req); j != i {
				t.Fatalf("host %q picks route %d, %q picks %d", host, i, alt, j)
			}
		}
	})
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
