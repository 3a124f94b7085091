package routes

import (
	"strings"
	"testing"
	"time"
)

// specForValidate returns a fresh spec that passes Validate; cases mutate it.
func specForValidate() *Spec {
	return &Spec{
		Listeners: []Listener{
			{Name: "bot-grpc", Address: "127.0.0.1:7000", Protocol: ListenerGRPC, CallerHeader: "x-hop-caller"},
			{Name: "bot-http", Address: "127.0.0.1:7080", Protocol: ListenerHTTP, Caller: "gateway",
				TrustedProxies: []string{"10.0.0.0/8", "192.168.1.10", "fd00::/8"}},
		},
		Callers: []string{"client", "gateway", "nlu", "dm", "inference"},
		Routes: []Route{
			{Name: "nlu", Listener: "bot-grpc", Match: Match{GRPCService: "bot.v1.NLU"}, Upstream: "nlu", Timeout: 2 * time.Second},
			{Name: "parse", Listener: "bot-grpc", Match: Match{GRPCMethod: "/bot.v1.NLU/Parse"}, Upstream: "nlu-h2c"},
			{Name: "kb", Listener: "bot-http", Upstream: "kb", Match: Match{
				PathPrefix: "/kb/", Method: "POST", Host: "kb.example.com", Headers: map[string]string{"X-Tenant": "acme"}}},
			{Name: "grpc-over-http", Listener: "bot-http", Match: Match{GRPCService: "bot.v1.DM"}, Upstream: "nlu"},
		},
		Upstreams: []Upstream{
			{Name: "nlu", Protocol: UpstreamGRPC, Endpoints: []string{"127.0.0.1:7101", "127.0.0.1:7102"}, Balance: BalanceRoundRobin},
			{Name: "nlu-h2c", Protocol: UpstreamH2C, Endpoints: []string{"nlu.internal:7101"}},
			{Name: "kb", Protocol: UpstreamHTTP, Endpoints: []string{"[::1]:8080"}, DialTimeout: time.Second},
		},
	}
}

func TestValidateAcceptsValidSpec(t *testing.T) {
	if errs := Validate(specForValidate()); len(errs) > 0 {
		t.Fatalf("Validate(specForValidate()) = %v", errs)
	}
	if errs := Validate(&Spec{}); len(errs) > 0 {
		t.Fatalf("Validate(empty) = %v", errs)
	}
}

func TestValidate(t *testing.T) {
	type want struct{ path, msg string }
	for _, tc := range []struct {
		name   string
		mutate func(s *Spec)
		want   []want
	}{
		// Callers.
		{"empty caller", func(s *Spec) { s.Callers = append(s.Callers, "") },
			[]want{{"callers[5]", "caller name is empty"}}},
		{"duplicate caller", func(s *Spec) { s.Callers = append(s.Callers, "nlu") },
			[]want{{"callers[5]", `duplicate caller "nlu" (first at callers[2])`}}},
		{"caller label charset", func(s *Spec) { s.Callers = append(s.Callers, "Web Client") },
			[]want{{"callers[5]", `invalid caller "Web Client"`}}},
		{"caller other reserved", func(s *Spec) { s.Callers = append(s.Callers, "other") },
			[]want{{"callers[5]", `"other" is reserved`}}},

		// Listeners.
		{"listener name required", func(s *Spec) { s.Listeners[1].Name = ""; s.Routes = s.Routes[:2] },
			[]want{{"listeners[1].name", "name is required"}}},
		{"duplicate listener name", func(s *Spec) { s.Listeners[1].Name = "bot-grpc"; s.Routes = s.Routes[:2] },
			[]want{{"listeners[1].name", `duplicate listener name "bot-grpc" (first at listeners[0])`}}},
		{"address required", func(s *Spec) { s.Listeners[0].Address = "" },
			[]want{{"listeners[0].address", "address is required"}}},
		{"address without port", func(s *Spec) { s.Listeners[0].Address = "127.0.0.1" },
			[]want{{"listeners[0].address", `invalid address "127.0.0.1": want host:port`}}},
		{"address without host", func(s *Spec) { s.Listeners[0].Address = ":7000" },
			[]want{{"listeners[0].address", `address ":7000" has no host: write 127.0.0.1:7000 for loopback or 0.0.0.0:7000 for all interfaces`}}},
		{"named port", func(s *Spec) { s.Listeners[0].Address = "127.0.0.1:http" },
			[]want{{"listeners[0].address", `port "http" is not a number in 1..65535`}}},
		{"port too large", func(s *Spec) { s.Listeners[0].Address = "127.0.0.1:65536" },
			[]want{{"listeners[0].address", `port "65536" is not a number in 1..65535`}}},
		{"bad host", func(s *Spec) { s.Listeners[0].Address = "bad host:7000" },
			[]want{{"listeners[0].address", `invalid host "bad host"`}}},
		{"same address", func(s *Spec) { s.Listeners[1].Address = "127.0.0.1:7000" },
			[]want{{"listeners[1].address", `address 127.0.0.1:7000 clashes with listener "bot-grpc" (listeners[0], 127.0.0.1:7000)`}}},
		{"same address, IPv6 spelled differently", func(s *Spec) {
			s.Listeners[0].Address = "[::1]:7000"
			s.Listeners[1].Address = "[0:0::1]:7000"
		}, []want{{"listeners[1].address", "clashes with listener"}}},
		{"ipv4 wildcard takes the port", func(s *Spec) { s.Listeners[1].Address = "0.0.0.0:7000" },
			[]want{{"listeners[1].address", `address 0.0.0.0:7000 clashes with listener "bot-grpc"`}}},
		{"ipv6 wildcard takes the port", func(s *Spec) { s.Listeners[0].Address = "[::]:7080" },
			[]want{{"listeners[1].address", `address 127.0.0.1:7080 clashes with listener "bot-grpc" (listeners[0], [::]:7080)`}}},
		{"protocol required", func(s *Spec) { s.Listeners[1].Protocol = "" },
			[]want{{"listeners[1].protocol", "protocol is required (grpc or http)"}}},
		{"unknown protocol", func(s *Spec) { s.Listeners[1].Protocol = "https" },
			[]want{{"listeners[1].protocol", `unknown protocol "https" (want grpc or http)`}}},
		{"caller and caller_header", func(s *Spec) { s.Listeners[0].Caller = "nlu" },
			[]want{{"listeners[0].caller", "caller and caller_header are mutually exclusive"}}},
		{"caller not in callers", func(s *Spec) { s.Listeners[1].Caller = "web" },
			[]want{{"listeners[1].caller", `caller "web" is not in callers (client, gateway, nlu, dm, inference)`}}},
		{"any caller without callers list", func(s *Spec) { s.Callers = nil; s.Listeners[1].Caller = "web" }, nil},
		{"bad caller header", func(s *Spec) { s.Listeners[0].CallerHeader = "x caller" },
			[]want{{"listeners[0].caller_header", `invalid header name "x caller"`}}},
		{"trusted proxies on grpc", func(s *Spec) { s.Listeners[0].TrustedProxies = []string{"10.0.0.0/8"} },
			[]want{{"listeners[0].trusted_proxies", "trusted_proxies applies to http listeners only"}}},
		{"bad trusted proxy", func(s *Spec) { s.Listeners[1].TrustedProxies = []string{"10.0.0.0/33", "10.0.0.1"} },
			[]want{{"listeners[1].trusted_proxies[0]", `invalid CIDR or IP "10.0.0.0/33"`}}},
		{"negative listener max message", func(s *Spec) { s.Listeners[0].MaxMessageBytes = -1 },
			[]want{{"listeners[0].max_message_bytes", "must not be negative"}}},

		// Upstreams.
		{"upstream name required", func(s *Spec) { s.Upstreams[2].Name = ""; s.Routes = s.Routes[:2] },
			[]want{{"upstreams[2].name", "name is required"}}},
		{"duplicate upstream name", func(s *Spec) { s.Upstreams[1].Name = "nlu"; s.Routes[1].Upstream = "nlu" },
			[]want{{"upstreams[1].name", `duplicate upstream name "nlu" (first at upstreams[0])`}}},
		{"upstream protocol required", func(s *Spec) { s.Upstreams[2].Protocol = "" },
			[]want{{"upstreams[2].protocol", "protocol is required (grpc, http or h2c)"}}},
		{"unknown upstream protocol", func(s *Spec) { s.Upstreams[2].Protocol = "http2" },
			[]want{{"upstreams[2].protocol", `unknown protocol "http2" (want grpc, http or h2c)`}}},
		{"no endpoints", func(s *Spec) { s.Upstreams[2].Endpoints = nil },
			[]want{{"upstreams[2].endpoints", "at least one endpoint"}}},
		{"endpoint with scheme", func(s *Spec) { s.Upstreams[2].Endpoints = []string{"http://kb:80"} },
			[]want{{"upstreams[2].endpoints[0]", "write host:port without a scheme"}}},
		{"endpoint without port", func(s *Spec) { s.Upstreams[2].Endpoints = []string{"kb"} },
			[]want{{"upstreams[2].endpoints[0]", `invalid endpoint "kb": want host:port`}}},
		{"endpoint port zero", func(s *Spec) { s.Upstreams[2].Endpoints = []string{"kb:0"} },
			[]want{{"upstreams[2].endpoints[0]", `port "0" is not a number in 1..65535`}}},
		{"duplicate endpoint", func(s *Spec) { s.Upstreams[0].Endpoints = []string{"127.0.0.1:7101", "127.0.0.1:7101"} },
			[]want{{"upstreams[0].endpoints[1]", "duplicate endpoint 127.0.0.1:7101 (first at endpoints[0])"}}},
		{"unknown balance", func(s *Spec) { s.Upstreams[0].Balance = "least_conn" },
			[]want{{"upstreams[0].balance", `unknown balance "least_conn" (want p2c_ewma or round_robin)`}}},
		{"negative dial timeout", func(s *Spec) { s.Upstreams[0].DialTimeout = -time.Second },
			[]want{{"upstreams[0].dial_timeout", "must not be negative"}}},
		{"negative upstream max message", func(s *Spec) { s.Upstreams[0].MaxMessageBytes = -1 },
			[]want{{"upstreams[0].max_message_bytes", "must not be negative"}}},
		{"max_concurrent", func(s *Spec) { s.Upstreams[0].MaxConcurrent = 512 },
			[]want{{"upstreams[0].max_concurrent", "not supported yet (bulkhead lands with resilience)"}}},
		{"breaker", func(s *Spec) { s.Upstreams[0].Breaker = &Breaker{} },
			[]want{{"upstreams[0].breaker", "not supported yet"}}},

		// Routes.
		{"route name required", func(s *Spec) { s.Routes[0].Name = "" },
			[]want{{"routes[0].name", "name is required"}}},
		{"duplicate route name", func(s *Spec) { s.Routes[2].Name = "nlu" },
			[]want{{"routes[2].name", `duplicate route name "nlu" (first at routes[0])`}}},
		{"listener required", func(s *Spec) { s.Routes[0].Listener = "" },
			[]want{{"routes[0].listener", "listener is required (defined: bot-grpc, bot-http)"}}},
		{"unknown listener", func(s *Spec) { s.Routes[0].Listener = "grpc" },
			[]want{{"routes[0].listener", `unknown listener "grpc" (defined: bot-grpc, bot-http)`}}},
		{"upstream required", func(s *Spec) { s.Routes[0].Upstream = "" },
			[]want{{"routes[0].upstream", "upstream is required (defined: kb, nlu, nlu-h2c)"}}},
		{"unknown upstream", func(s *Spec) { s.Routes[2].Upstream = "kb2" },
			[]want{{"routes[2].upstream", `unknown upstream "kb2" (defined: kb, nlu, nlu-h2c)`}}},
		{"unknown upstream, none defined", func(s *Spec) { s.Upstreams = nil; s.Routes = s.Routes[:1] },
			[]want{{"routes[0].upstream", `unknown upstream "nlu" (no upstreams defined)`}}},
		{"grpc listener to http upstream", func(s *Spec) { s.Routes[0].Upstream = "kb" },
			[]want{{"routes[0].upstream", `upstream "kb" speaks http (HTTP/1.1) but listener "bot-grpc" is grpc: gRPC needs an HTTP/2 upstream`}}},
		{"negative timeout", func(s *Spec) { s.Routes[0].Timeout = -time.Second },
			[]want{{"routes[0].timeout", "must not be negative"}}},
		{"retry", func(s *Spec) { s.Routes[0].Retry = &Retry{Attempts: 2} },
			[]want{{"routes[0].retry", "not supported yet"}}},
		{"fallback", func(s *Spec) { s.Routes[2].Fallback = &Fallback{} },
			[]want{{"routes[2].fallback", "not supported yet"}}},

		// Matches.
		{"service and method", func(s *Spec) { s.Routes[0].Match.GRPCMethod = "/bot.v1.NLU/Parse" },
			[]want{{"routes[0].match.grpc_method", "grpc_service and grpc_method are mutually exclusive"}}},
		{"service with slash", func(s *Spec) { s.Routes[0].Match.GRPCService = "/bot.v1.NLU/" },
			[]want{{"routes[0].match.grpc_service", `invalid service "/bot.v1.NLU/": write the service name only`}}},
		{"method without leading slash", func(s *Spec) { s.Routes[1].Match.GRPCMethod = "bot.v1.NLU/Parse" },
			[]want{{"routes[1].match.grpc_method", `invalid method "bot.v1.NLU/Parse": want /package.Service/Method`}}},
		{"method with empty segment", func(s *Spec) { s.Routes[1].Match.GRPCMethod = "/bot.v1.NLU/" },
			[]want{{"routes[1].match.grpc_method", "invalid method"}}},
		{"method with three segments", func(s *Spec) { s.Routes[1].Match.GRPCMethod = "/a/b/c" },
			[]want{{"routes[1].match.grpc_method", "invalid method"}}},
		{"path prefix without slash", func(s *Spec) { s.Routes[2].Match.PathPrefix = "kb/" },
			[]want{{"routes[2].match.path_prefix", `path_prefix "kb/" must start with '/'`}}},
		{"lowercase method", func(s *Spec) { s.Routes[2].Match.Method = "post" },
			[]want{{"routes[2].match.method", `invalid HTTP method "post": want an uppercase method`}}},
		{"method with space", func(s *Spec) { s.Routes[2].Match.Method = "PO ST" },
			[]want{{"routes[2].match.method", "invalid HTTP method"}}},
		{"host with port", func(s *Spec) { s.Routes[2].Match.Host = "kb.example.com:443" },
			[]want{{"routes[2].match.host", "hosts are matched without the port"}}},
		{"bracketed ipv6 host", func(s *Spec) { s.Routes[2].Match.Host = "[::1]" },
			[]want{{"routes[2].match.host", "write IPv6 hosts without brackets"}}},
		{"ipv6 host", func(s *Spec) { s.Routes[2].Match.Host = "::1" }, nil},
		{"bad header name", func(s *Spec) { s.Routes[2].Match.Headers = map[string]string{"": "x", "x:y": "z"} },
			[]want{
				{"routes[2].match.headers.", `invalid header name ""`},
				{"routes[2].match.headers.x:y", `invalid header name "x:y"`},
			}},
		{"header value with newline", func(s *Spec) { s.Routes[2].Match.Headers = map[string]string{"x-a": "a\nb"} },
			[]want{{"routes[2].match.headers.x-a", "control characters"}}},
		{"path_prefix on grpc listener", func(s *Spec) { s.Routes[0].Match = Match{PathPrefix: "/bot.v1.NLU/"} },
			[]want{{"routes[0].match.path_prefix", "use grpc_service or grpc_method on grpc listeners"}}},
		{"method on grpc listener", func(s *Spec) { s.Routes[0].Match.Method = "POST" },
			[]want{{"routes[0].match.method", "use grpc_service or grpc_method on grpc listeners"}}},
		{"empty match", func(s *Spec) { s.Routes[2].Match = Match{} }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := specForValidate()
			tc.mutate(s)
			got := Validate(s)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d: %v", len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				if got[i].Path != w.path || !strings.Contains(got[i].Msg, w.msg) {
					t.Errorf("error %d = %q, want path %q with %q", i, got[i].Error(), w.path, w.msg)
				}
			}
		})
	}
}

func TestValidateReportsEverything(t *testing.T) {
	s := specForValidate()
	s.Callers[0] = "Client"
	s.Listeners[0].Protocol = "tcp"
	s.Upstreams[0].Endpoints = nil
	s.Routes[2].Upstream = "nope"
	s.Routes[3].Timeout = -1
	got := Validate(s)
	want := []string{
		"callers[0]",
		"listeners[0].protocol",
		"upstreams[0].endpoints",
		"routes[2].upstream",
		"routes[3].timeout",
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want errors at %v", got, want)
	}
	for i := range want {
		if got[i].Path != want[i] {
			t.Errorf("error %d at %q, want %q", i, got[i].Path, want[i])
		}
	}
}

func TestAddressesClash(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1:7000", "127.0.0.1:7000", true},
		{"127.0.0.1:7000", "127.0.0.1:7001", false},
		{"127.0.0.1:7000", "127.0.0.2:7000", false},
		{"0.0.0.0:7000", "10.1.2.3:7000", true},
		{"[::]:7000", "127.0.0.1:7000", true},
		{"[::1]:7000", "[0::1]:7000", true},
		{"localhost:7000", "127.0.0.1:7000", false}, // not resolved: no I/O
		{"LOCALHOST:7000", "localhost:7000", true},
		{"127.0.0.1:0", "127.0.0.1:0", false},
		{"0.0.0.0:0", "127.0.0.1:0", false},
		{"127.0.0.1", "127.0.0.1", false},
	} {
		if got := AddressesClash(tc.a, tc.b); got != tc.want {
			t.Errorf("AddressesClash(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestCheckListenAddress(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:7000", true},
		{"localhost:7000", true},
		{"[::1]:7000", true},
		{"0.0.0.0:7000", true},
		{"127.0.0.1:0", true}, // kernel-chosen port, for tests and the demo
		{":7000", false},
		{"127.0.0.1", false},
		{"127.0.0.1:65536", false},
		{"127.0.0.1:-1", false},
		{"::1:7000", false},
		{"host/x:7000", false},
	} {
		if err := CheckListenAddress(tc.addr); (err == nil) != tc.ok {
			t.Errorf("CheckListenAddress(%q) = %v, want ok=%v", tc.addr, err, tc.ok)
		}
	}
}

// TestValidateClashesAgreeWithAddressesClash checks the one-pass clash
// index in Validate against the pairwise definition.
func TestValidateClashesAgreeWithAddressesClash(t *testing.T) {
	addrs := []string{"127.0.0.1:7000", "127.0.0.1:7001", "0.0.0.0:7000", "[::]:7001", "[::1]:7000",
		"[0::1]:7000", "localhost:7000", "127.0.0.1:0", "0.0.0.0:0", "10.0.0.1:7000"}
	for _, a := range addrs {
		for _, b := range addrs {
			s := &Spec{Listeners: []Listener{
				{Name: "a", Address: a, Protocol: ListenerHTTP},
				{Name: "b", Address: b, Protocol: ListenerHTTP},
			}}
			got := len(Validate(s)) > 0
			if want := AddressesClash(a, b); got != want {
				t.Errorf("listeners %s and %s: Validate reports clash=%v, AddressesClash=%v", a, b, got, want)
			}
		}
	}
}
