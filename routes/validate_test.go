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
	if errs := Validate(specWithResilience()); len(errs) > 0 {
		t.Fatalf("Validate(specWithResilience()) = %v", errs)
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
		{"listener limits negative", func(s *Spec) {
			s.Listeners[0].Limits = ListenerLimits{MaxHeaderBytes: -1, MaxConcurrentStreams: -1, IdleTimeout: -time.Second, MaxConnections: -1, ReadHeaderTimeout: -time.Second}
		}, []want{
			{"listeners[0].limits.max_header_bytes", "must not be negative (0 means the default, 65536)"},
			{"listeners[0].limits.max_concurrent_streams", "must not be negative (0 means the default, 100)"},
			{"listeners[0].limits.max_connections", "must not be negative (0 means the default, 1024)"},
			{"listeners[0].limits.idle_timeout", "must not be negative (0 means the default, 2m0s)"},
			{"listeners[0].limits.read_header_timeout", "must not be negative (0 means the default, 10s)"},
		}},
		{"listener limits absurd", func(s *Spec) {
			s.Listeners[1].Limits = ListenerLimits{MaxHeaderBytes: 1 << 30, MaxConcurrentStreams: 1 << 20, MaxConnections: 1 << 30}
		}, []want{
			{"listeners[1].limits.max_header_bytes", "1073741824 is above the most allowed, 16777216"},
			{"listeners[1].limits.max_concurrent_streams", "1048576 is above the most allowed, 10000"},
			{"listeners[1].limits.max_connections", "1073741824 is above the most allowed, 1048576"},
		}},
		{"listener limits at the most allowed", func(s *Spec) {
			s.Listeners[1].Limits = ListenerLimits{MaxHeaderBytes: MaxHeaderBytesLimit, MaxConcurrentStreams: MaxConcurrentStreamsLimit, MaxConnections: MaxConnectionsLimit}
		}, nil},

		// Upstreams.
		{"upstream name required", func(s *Spec) { s.Upstreams[2].Name = ""; s.Routes = s.Routes[:2] },
			[]want{{"upstreams[2].name", "name is required"}}},
		{"duplicate upstream name", func(s *Spec) { s.Upstreams[1].Name = "nlu"; s.Routes[1].Upstream = "nlu" },
			[]want{{"upstreams[1].name", `duplicate upstream name "nlu" (first at upstreams[0])`}}},
		{"upstream protocol required", func(s *Spec) { s.Upstreams[2].Protocol = "" },
			[]want{{"upstreams[2].protocol", "protocol is required (grpc, http, h2c or h2)"}}},
		{"unknown upstream protocol", func(s *Spec) { s.Upstreams[2].Protocol = "http2" },
			[]want{{"upstreams[2].protocol", `unknown protocol "http2" (want grpc, http, h2c or h2)`}}},
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
		{"upstream limits negative", func(s *Spec) {
			s.Upstreams[2].Limits = UpstreamLimits{MaxHeaderBytes: -1, IdleTimeout: -time.Second}
		}, []want{
			{"upstreams[2].limits.max_header_bytes", "must not be negative (0 means the default, 1048576)"},
			{"upstreams[2].limits.idle_timeout", "must not be negative (0 means the default, 1m30s)"},
		}},
		{"upstream limits absurd", func(s *Spec) { s.Upstreams[0].Limits.MaxHeaderBytes = MaxHeaderBytesLimit + 1 },
			[]want{{"upstreams[0].limits.max_header_bytes", "16777217 is above the most allowed, 16777216"}}},

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
		{"path_prefix with a dot-segment", func(s *Spec) { s.Routes[2].Match.PathPrefix = "/kb/../admin/" },
			[]want{{"routes[2].match.path_prefix", `path_prefix "/kb/../admin/" can never match: ambiguous request path: dot-segment`}}},
		{"path_prefix with an encoded slash", func(s *Spec) { s.Routes[2].Match.PathPrefix = "/kb%2F" },
			[]want{{"routes[2].match.path_prefix", "can never match: ambiguous request path: encoded"}}},

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
		// GenAI.
		{"genai openai", func(s *Spec) { s.Routes[2].GenAI = &GenAI{API: GenAIOpenAI} }, nil},
		{"genai without api", func(s *Spec) { s.Routes[2].GenAI = &GenAI{} },
			[]want{{"routes[2].genai.api", "api is required (openai)"}}},
		{"genai unknown api", func(s *Spec) { s.Routes[2].GenAI = &GenAI{API: "anthropic"} },
			[]want{{"routes[2].genai.api", `unknown api "anthropic"`}}},
		{"genai on grpc listener", func(s *Spec) { s.Routes[0].GenAI = &GenAI{API: GenAIOpenAI} },
			[]want{{"routes[0].genai", "genai routes must be on an http listener"}}},
		// The frame relay (listeners[].relay).
		{"relay frames", func(s *Spec) { s.Listeners[0].Relay = ListenerRelayFrames }, nil},
		{"relay messages (grpc-go)", func(s *Spec) { s.Listeners[0].Relay = ListenerRelayMessages }, nil},
		{"relay messages on http listener", func(s *Spec) { s.Listeners[1].Relay = ListenerRelayMessages },
			[]want{{"listeners[1].relay", `relay applies to grpc listeners only (listener "bot-http" is http)`}}},
		{"unknown relay", func(s *Spec) { s.Listeners[0].Relay = "bytes" },
			[]want{{"listeners[0].relay", `unknown relay "bytes" (want frames or messages, or leave it out for the frame relay)`}}},
		{"relay on http listener", func(s *Spec) { s.Listeners[1].Relay = ListenerRelayFrames },
			[]want{{"listeners[1].relay", `relay applies to grpc listeners only (listener "bot-http" is http)`}}},
		{"relay on tls listener", func(s *Spec) {
			s.Listeners[0].Relay = ListenerRelayFrames
			s.Listeners[0].TLS = &ListenerTLS{CertFile: "c.pem", KeyFile: "k.pem"}
		}, nil},
		{"relay route with retry is accepted", func(s *Spec) {
			s.Listeners[0].Relay = ListenerRelayFrames
			s.Routes[0].Retry = &Retry{Attempts: 2, On: []string{"unavailable"}}
		}, nil}, // served through the relay's message adapter
		{"relay route with fallback is accepted", func(s *Spec) {
			s.Listeners[0].Relay = ListenerRelayFrames
			s.Routes[0].Fallback = &Fallback{After: 300 * time.Millisecond, Use: []string{"cache"}}
		}, nil},
		{"relay route to tls upstream", func(s *Spec) {
			s.Listeners[0].Relay = ListenerRelayFrames
			s.Upstreams[0].TLS = &UpstreamTLS{}
		}, nil},
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
	s.Routes[3].Match = Match{GRPCMethod: "nope"}
	got := Validate(s)
	want := []string{
		"callers[0]",
		"listeners[0].protocol",
		"upstreams[0].endpoints",
		"routes[2].upstream",
		"routes[3].match.grpc_method",
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

// specWithResilience is specForValidate with every resilience feature in
// use, written the way the design document shows it.
func specWithResilience() *Spec {
	s := specForValidate()
	s.Upstreams[0].MaxConcurrent = 512
	s.Upstreams[0].Breaker = &Breaker{Window: 10 * time.Second, MinRequests: 20, FailureRatio: 0.5,
		SlowCall: time.Second, SlowRatio: 0.8, OpenFor: 5 * time.Second, HalfOpenRequests: 3}
	s.Upstreams[0].Outlier = &Outlier{ConsecutiveFailures: 5, BaseEjection: 10 * time.Second,
		MaxEjection: 5 * time.Minute, MaxEjectedPercent: 50}
	s.Upstreams[2].Breaker = &Breaker{} // all defaults
	s.Routes[0].Retry = &Retry{Attempts: 2, On: []string{"unavailable", "resource_exhausted", RetryConnectFailure}, Budget: 0.2}
	s.Routes[0].Fallback = &Fallback{After: 200 * time.Millisecond, Use: []string{"cache", "static"},
		Static: &FallbackStatic{GRPCCode: "unavailable", GRPCMessage: "knowledge base is slow, try again"}}
	s.Routes[1].Fallback = &Fallback{After: time.Second, Use: []string{"static"}, Static: &FallbackStatic{}} // empty OK message
	s.Routes[2].Timeout = 5 * time.Second
	s.Routes[2].Retry = &Retry{Attempts: 3, On: []string{"502", "503", "504", "5xx", "429", "unavailable", RetryConnectFailure}}
	s.Routes[2].Fallback = &Fallback{
		After:      300 * time.Millisecond,
		Use:        []string{"cache", "static", "upstream"},
		Cache:      &FallbackCache{TTL: 10 * time.Minute, MaxEntries: 10000, MaxBytes: 1 << 20, Headers: []string{"X-Tenant", "accept-language"}},
		Static:     &FallbackStatic{Status: 200, ContentType: "application/json; charset=utf-8", Body: `{"results":[],"degraded":true}`, GRPCCode: "unavailable"},
		Upstream:   "nlu-h2c",
		Background: &FallbackBackground{MaxInflight: 64, Timeout: 10 * time.Second},
	}
	return s
}

func TestValidateResilience(t *testing.T) {
	type want struct{ path, msg string }
	for _, tc := range []struct {
		name   string
		mutate func(s *Spec)
		want   []want
	}{
		{"all zero values are defaults", func(s *Spec) {
			s.Upstreams[0].Breaker = &Breaker{}
			s.Upstreams[0].Outlier = &Outlier{}
			s.Upstreams[0].MaxConcurrent = 0
			s.Routes[2].Fallback.Cache = &FallbackCache{}
			s.Routes[2].Fallback.Background = &FallbackBackground{}
			s.Routes[2].Retry.Budget = 0
		}, nil},

		// Bulkhead.
		{"negative max_concurrent", func(s *Spec) { s.Upstreams[0].MaxConcurrent = -1 },
			[]want{{"upstreams[0].max_concurrent", "must not be negative (0 means unlimited)"}}},

		// Breaker.
		{"breaker negative durations and counts", func(s *Spec) {
			s.Upstreams[0].Breaker = &Breaker{Window: -1, MinRequests: -1, SlowCall: -1, OpenFor: -1, HalfOpenRequests: -1}
		}, []want{
			{"upstreams[0].breaker.window", "must not be negative (0 means the default, 10s)"},
			{"upstreams[0].breaker.min_requests", "must not be negative (0 means the default, 20)"},
			{"upstreams[0].breaker.slow_call", "must not be negative"},
			{"upstreams[0].breaker.open_for", "must not be negative (0 means the default, 5s)"},
			{"upstreams[0].breaker.half_open_requests", "must not be negative (0 means the default, 3)"},
		}},
		{"failure ratio above 1", func(s *Spec) { s.Upstreams[0].Breaker.FailureRatio = 1.5 },
			[]want{{"upstreams[0].breaker.failure_ratio", "must be in (0, 1] (0 means the default, 0.5)"}}},
		{"failure ratio negative", func(s *Spec) { s.Upstreams[0].Breaker.FailureRatio = -0.1 },
			[]want{{"upstreams[0].breaker.failure_ratio", "must be in (0, 1]"}}},
		{"failure ratio 1", func(s *Spec) { s.Upstreams[0].Breaker.FailureRatio = 1 }, nil},
		{"slow ratio above 1", func(s *Spec) { s.Upstreams[0].Breaker.SlowRatio = 2 },
			[]want{{"upstreams[0].breaker.slow_ratio", "must be in (0, 1] (0 means the default, 0.8)"}}},
		{"slow ratio without slow call", func(s *Spec) { s.Upstreams[0].Breaker.SlowCall = 0 },
			[]want{{"upstreams[0].breaker.slow_ratio", "slow_ratio needs slow_call"}}},
		{"slow call with default ratio", func(s *Spec) { s.Upstreams[0].Breaker.SlowRatio = 0 }, nil},

		// Outlier ejection.
		{"outlier negatives", func(s *Spec) {
			s.Upstreams[0].Outlier = &Outlier{ConsecutiveFailures: -1, BaseEjection: -1, MaxEjection: -1, MaxEjectedPercent: -1}
		}, []want{
			{"upstreams[0].outlier.consecutive_failures", "must not be negative (0 means the default, 5)"},
			{"upstreams[0].outlier.base_ejection", "must not be negative (0 means the default, 10s)"},
			{"upstreams[0].outlier.max_ejection", "must not be negative (0 means the default, 5m0s)"},
			{"upstreams[0].outlier.max_ejected_percent", "must be 1..100 (0 means the default, 50)"},
		}},
		{"outlier percent above 100", func(s *Spec) { s.Upstreams[0].Outlier.MaxEjectedPercent = 101 },
			[]want{{"upstreams[0].outlier.max_ejected_percent", "must be 1..100"}}},
		{"outlier max below base", func(s *Spec) { s.Upstreams[0].Outlier.MaxEjection = time.Second },
			[]want{{"upstreams[0].outlier.max_ejection", "max_ejection (1s) is shorter than base_ejection (10s)"}}},
		{"outlier base above default max", func(s *Spec) { s.Upstreams[0].Outlier = &Outlier{BaseEjection: time.Hour} },
			[]want{{"upstreams[0].outlier.base_ejection", "max_ejection (5m0s) is shorter than base_ejection (1h0m0s)"}}},

		// Retry.
		{"retry attempts missing", func(s *Spec) { s.Routes[0].Retry.Attempts = 0 },
			[]want{{"routes[0].retry.attempts", "attempts is required: 1..10, counting the first try (1 means no retry)"}}},
		{"retry attempts too many", func(s *Spec) { s.Routes[0].Retry.Attempts = 11 },
			[]want{{"routes[0].retry.attempts", "attempts must be 1..10"}}},
		{"retry attempts negative", func(s *Spec) { s.Routes[0].Retry.Attempts = -2 },
			[]want{{"routes[0].retry.attempts", "attempts must be 1..10"}}},
		{"retry one attempt", func(s *Spec) { s.Routes[0].Retry.Attempts = 1 }, nil},
		{"retry on missing", func(s *Spec) { s.Routes[0].Retry.On = nil },
			[]want{{"routes[0].retry.on", "at least one condition is required"}}},
		{"retry on unknown", func(s *Spec) { s.Routes[0].Retry.On = []string{"unavailable", "flaky"} },
			[]want{{"routes[0].retry.on[1]", `invalid retry condition "flaky": want a gRPC code such as unavailable`}}},
		{"retry on upper case", func(s *Spec) { s.Routes[0].Retry.On = []string{"UNAVAILABLE"} },
			[]want{{"routes[0].retry.on[0]", `invalid retry condition "UNAVAILABLE": write unavailable`}}},
		{"retry on kebab case", func(s *Spec) { s.Routes[0].Retry.On = []string{"resource-exhausted"} },
			[]want{{"routes[0].retry.on[0]", "write resource_exhausted"}}},
		{"retry on connect_failure", func(s *Spec) { s.Routes[0].Retry.On = []string{"connect_failure"} },
			[]want{{"routes[0].retry.on[0]", "write connect-failure"}}},
		{"retry on ok", func(s *Spec) { s.Routes[0].Retry.On = []string{"ok"} },
			[]want{{"routes[0].retry.on[0]", "ok is a success"}}},
		{"retry on duplicate", func(s *Spec) { s.Routes[0].Retry.On = []string{"unavailable", "internal", "unavailable"} },
			[]want{{"routes[0].retry.on[2]", `duplicate condition "unavailable" (first at on[0])`}}},
		{"retry on http status on grpc listener", func(s *Spec) { s.Routes[0].Retry.On = []string{"503", "5xx"} },
			[]want{
				{"routes[0].retry.on[0]", `HTTP status "503" never ends a gRPC call`},
				{"routes[0].retry.on[1]", `HTTP status "5xx" never ends a gRPC call`},
			}},
		{"retry on 4xx class", func(s *Spec) { s.Routes[2].Retry.On = []string{"4xx"} },
			[]want{{"routes[2].retry.on[0]", "list statuses such as 429 instead"}}},
		{"retry on status out of range", func(s *Spec) { s.Routes[2].Retry.On = []string{"200", "600", "50x"} },
			[]want{
				{"routes[2].retry.on[0]", "400..599"},
				{"routes[2].retry.on[1]", "400..599"},
				{"routes[2].retry.on[2]", "400..599"},
			}},
		{"retry budget above 1", func(s *Spec) { s.Routes[0].Retry.Budget = 1.2 },
			[]want{{"routes[0].retry.budget", "must be between 0 and 1 (0 means the default, 0.2)"}}},
		{"retry budget negative", func(s *Spec) { s.Routes[0].Retry.Budget = -0.2 },
			[]want{{"routes[0].retry.budget", "must be between 0 and 1"}}},
		{"retry budget 1", func(s *Spec) { s.Routes[0].Retry.Budget = 1 }, nil},

		// Fallback.
		{"fallback after missing", func(s *Spec) { s.Routes[2].Fallback.After = 0 },
			[]want{{"routes[2].fallback.after", "after is required"}}},
		{"fallback after negative", func(s *Spec) { s.Routes[2].Fallback.After = -time.Second },
			[]want{{"routes[2].fallback.after", "must be positive"}}},
		{"fallback after not shorter than timeout", func(s *Spec) { s.Routes[2].Fallback.After = 5 * time.Second },
			[]want{{"routes[2].fallback.after", "after (5s) must be shorter than the route timeout (5s)"}}},
		{"fallback after without route timeout", func(s *Spec) { s.Routes[2].Timeout = 0; s.Routes[2].Fallback.After = 29 * time.Second }, nil},
		{"fallback after beyond the default first-response timeout", func(s *Spec) { s.Routes[2].Timeout = 0; s.Routes[2].Fallback.After = time.Minute },
			[]want{{"routes[2].fallback.after", "must be shorter than the default first-response timeout (30s)"}}},
		{"fallback after with no timeout at all", func(s *Spec) { s.Routes[2].Timeout = -1; s.Routes[2].Fallback.After = time.Minute }, nil},
		{"fallback use missing", func(s *Spec) {
			s.Routes[2].Fallback = &Fallback{After: time.Second}
		}, []want{{"routes[2].fallback.use", "at least one source is required (cache, static, upstream)"}}},
		{"fallback use unknown", func(s *Spec) { s.Routes[2].Fallback.Use = []string{"cache", "static", "upstream", "mirror"} },
			[]want{{"routes[2].fallback.use[3]", `unknown source "mirror" (want cache, static or upstream)`}}},
		{"fallback use duplicate", func(s *Spec) { s.Routes[2].Fallback.Use = []string{"cache", "static", "upstream", "cache"} },
			[]want{{"routes[2].fallback.use[3]", `duplicate source "cache" (first at use[0])`}}},
		{"fallback cache alone uses defaults", func(s *Spec) {
			s.Routes[2].Fallback = &Fallback{After: time.Second, Use: []string{"cache"}}
		}, nil},
		{"fallback cache block unused", func(s *Spec) { s.Routes[2].Fallback.Use = []string{"static", "upstream"} },
			[]want{{"routes[2].fallback.cache", "cache is configured but use does not list cache"}}},
		{"fallback cache negatives", func(s *Spec) {
			s.Routes[2].Fallback.Cache = &FallbackCache{TTL: -1, MaxEntries: -1, MaxBytes: -1}
		}, []want{
			{"routes[2].fallback.cache.ttl", "must not be negative (0 means the default, 10m0s)"},
			{"routes[2].fallback.cache.max_entries", "must not be negative (0 means the default, 10000)"},
			{"routes[2].fallback.cache.max_bytes", "must not be negative"},
		}},
		{"fallback cache headers", func(s *Spec) {
			s.Routes[2].Fallback.Cache.Headers = []string{"X-Tenant", "bad header", "x-tenant"}
		}, []want{
			{"routes[2].fallback.cache.headers[1]", `invalid header name "bad header"`},
			{"routes[2].fallback.cache.headers[2]", `duplicate header "x-tenant" (first at headers[0])`},
		}},
		{"fallback static missing", func(s *Spec) { s.Routes[2].Fallback.Static = nil },
			[]want{{"routes[2].fallback.use[1]", "static is listed but fallback.static is missing"}}},
		{"fallback static unused", func(s *Spec) { s.Routes[2].Fallback.Use = []string{"cache", "upstream"} },
			[]want{{"routes[2].fallback.static", "static is configured but use does not list static"}}},
		{"fallback static status 1xx", func(s *Spec) { s.Routes[2].Fallback.Static.Status = 103 },
			[]want{{"routes[2].fallback.static.status", "status must be 200..599 (0 means 200)"}}},
		{"fallback static status 600", func(s *Spec) { s.Routes[2].Fallback.Static.Status = 600 },
			[]want{{"routes[2].fallback.static.status", "status must be 200..599"}}},
		{"fallback static status 0 is 200", func(s *Spec) { s.Routes[2].Fallback.Static.Status = 0 }, nil},
		{"fallback static bad content type", func(s *Spec) { s.Routes[2].Fallback.Static.ContentType = "json" },
			[]want{{"routes[2].fallback.static.content_type", `invalid media type "json"`}}},
		{"fallback static content type with newline", func(s *Spec) {
			s.Routes[2].Fallback.Static.ContentType = "text/plain\nX-Evil: 1"
		}, []want{{"routes[2].fallback.static.content_type", "invalid media type"}}},
		{"fallback static http fields on grpc listener", func(s *Spec) {
			s.Routes[0].Fallback.Static = &FallbackStatic{Status: 503, ContentType: "text/plain", Body: "slow"}
		}, []want{
			{"routes[0].fallback.static.status", "status applies to HTTP answers; a grpc listener answers with grpc_code and grpc_message"},
			{"routes[0].fallback.static.content_type", "content_type applies to HTTP answers"},
			{"routes[0].fallback.static.body", "body applies to HTTP answers"},
		}},
		{"fallback static unknown grpc code", func(s *Spec) { s.Routes[0].Fallback.Static.GRPCCode = "UNAVAILABLE" },
			[]want{{"routes[0].fallback.static.grpc_code", `unknown gRPC code "UNAVAILABLE" (e.g. ok, unavailable, resource_exhausted); write unavailable`}}},
		{"fallback static grpc message with ok", func(s *Spec) { s.Routes[0].Fallback.Static.GRPCCode = "ok" },
			[]want{{"routes[0].fallback.static.grpc_message", "grpc_message needs a grpc_code other than ok"}}},
		{"fallback static grpc message without code", func(s *Spec) { s.Routes[0].Fallback.Static.GRPCCode = "" },
			[]want{{"routes[0].fallback.static.grpc_message", "grpc_message needs a grpc_code other than ok"}}},
		{"fallback upstream missing", func(s *Spec) { s.Routes[2].Fallback.Upstream = "" },
			[]want{{"routes[2].fallback.use[2]", "upstream is listed but fallback.upstream does not name one (defined: kb, nlu, nlu-h2c)"}}},
		{"fallback upstream unused", func(s *Spec) { s.Routes[2].Fallback.Use = []string{"cache", "static"} },
			[]want{{"routes[2].fallback.upstream", "upstream is set but use does not list upstream"}}},
		{"fallback upstream unknown", func(s *Spec) { s.Routes[2].Fallback.Upstream = "kb-mirror" },
			[]want{{"routes[2].fallback.upstream", `unknown upstream "kb-mirror" (defined: kb, nlu, nlu-h2c)`}}},
		{"fallback upstream is the route's", func(s *Spec) { s.Routes[2].Fallback.Upstream = "kb" },
			[]want{{"routes[2].fallback.upstream", `must differ from the route's own upstream "kb"`}}},
		{"fallback http upstream on grpc listener", func(s *Spec) {
			s.Routes[0].Fallback.Use = append(s.Routes[0].Fallback.Use, "upstream")
			s.Routes[0].Fallback.Upstream = "kb"
		}, []want{{"routes[0].fallback.upstream", `upstream "kb" speaks http (HTTP/1.1) but listener "bot-grpc" is grpc`}}},
		{"fallback background negatives", func(s *Spec) {
			s.Routes[2].Fallback.Background = &FallbackBackground{MaxInflight: -1, Timeout: -1}
		}, []want{
			{"routes[2].fallback.background.max_inflight", "must not be negative (0 means the default, 64)"},
			{"routes[2].fallback.background.timeout", "must not be negative (0 means the default, 10s)"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := specWithResilience()
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
