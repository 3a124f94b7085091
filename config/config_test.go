package config_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// base is the smallest valid file; most cases below append to it, so line
// 13 is the first line after it and, when indented by four spaces, part of
// routes[0].
const base = `listeners:
  - name: web
    address: 127.0.0.1:7080
    protocol: http
upstreams:
  - name: kb
    protocol: http
    endpoints: [127.0.0.1:7201]
routes:
  - name: kb
    listener: web
    upstream: kb
`

// upstreamLast places upstreams last so that line 13 belongs to upstreams[0].
const upstreamLast = `listeners:
  - name: web
    address: 127.0.0.1:7080
    protocol: http
routes:
  - name: kb
    listener: web
    upstream: kb
upstreams:
  - name: kb
    protocol: http
    endpoints: [127.0.0.1:7201]
`

type invalidCase struct {
	name string
	yaml string
	line int
	path string
	msg  string // substring of the error message
	// count is how many errors the file has in all (0 means 1).
	count int
}

// invalidCases has one case per kind of error. Each names the exact line
// and field path; they double as the fuzz seed corpus.
func invalidCases() []invalidCase {
	return []invalidCase{
		{
			name: "unknown field",
			yaml: base + "    tmeout: 2s\n",
			line: 13, path: "routes[0].tmeout",
			msg: `unknown field "tmeout"; did you mean "timeout"? (valid: name, listener, match, upstream, timeout, retry, fallback, genai)`,
		},
		{
			name: "genai unknown api",
			yaml: base + "    genai: {api: claude}\n",
			line: 13, path: "routes[0].genai.api",
			msg: `unknown api "claude" (known: openai)`,
		},
		{
			name: "genai bad price",
			yaml: base + "genai:\n  prices:\n    m: {input: -1}\n",
			line: 15, path: "genai.prices.m.input",
			msg: "must be a finite price per million tokens",
		},
		{
			name: "access log ratio",
			yaml: base + "access_log: {output: stdout, sample_ratio: 2}\n",
			line: 13, path: "access_log.sample_ratio",
			msg: "must be between 0 and 1",
		},
		{
			name: "access log records without a collector",
			yaml: base + "access_log: {otlp: true}\n",
			line: 13, path: "access_log.otlp",
			msg: "records go to the OTLP collector of telemetry.tracing.otlp, which is not configured",
		},
		{
			name: "unknown top-level field",
			yaml: base + "listner: x\n",
			line: 13, path: "listner",
			msg: `unknown field "listner"`,
		},
		{
			name: "bad duration",
			yaml: base + "    timeout: 2x\n",
			line: 13, path: "routes[0].timeout",
			msg: `invalid duration "2x": use Go syntax such as 250ms, 5s or 1m30s`,
		},
		{
			name: "duration without unit",
			yaml: base + "    timeout: 5\n",
			line: 13, path: "routes[0].timeout",
			msg: "invalid duration 5: durations need a unit, e.g. 5s",
		},
		{
			name: "negative duration",
			yaml: upstreamLast + "    dial_timeout: -1s\n",
			line: 13, path: "upstreams[0].dial_timeout",
			msg: "must not be negative",
		},
		{
			name: "address without port",
			yaml: strings.Replace(base, "127.0.0.1:7080", "127.0.0.1", 1),
			line: 3, path: "listeners[0].address",
			msg: `invalid address "127.0.0.1": want host:port`,
		},
		{
			name: "address port out of range",
			yaml: strings.Replace(base, "127.0.0.1:7080", "127.0.0.1:70000", 1),
			line: 3, path: "listeners[0].address",
			msg: `port "70000" is not a number in 1..65535`,
		},
		{
			name: "endpoint with scheme",
			yaml: strings.Replace(base, "[127.0.0.1:7201]", "[http://127.0.0.1:7201]", 1),
			line: 8, path: "upstreams[0].endpoints[0]",
			msg: "write host:port without a scheme",
		},
		{
			name: "dangling listener ref",
			yaml: strings.Replace(base, "listener: web", "listener: webb", 1),
			line: 11, path: "routes[0].listener",
			msg: `unknown listener "webb" (defined: web)`,
		},
		{
			name: "dangling upstream ref",
			yaml: strings.Replace(base, "upstream: kb", "upstream: kb2", 1),
			line: 12, path: "routes[0].upstream",
			msg: `unknown upstream "kb2" (defined: kb)`,
		},
		{
			name: "missing upstream",
			yaml: strings.Replace(base, "    upstream: kb\n", "", 1),
			line: 10, path: "routes[0].upstream",
			msg: "upstream is required (defined: kb)",
		},
		{
			name: "duplicate route name",
			yaml: base + "  - name: kb\n    listener: web\n    upstream: kb\n",
			line: 13, path: "routes[1].name",
			msg: `duplicate route name "kb" (first at routes[0])`,
		},
		{
			name: "duplicate listener name",
			yaml: strings.Replace(base, "upstreams:", "  - {name: web, address: 127.0.0.1:7081, protocol: http}\nupstreams:", 1),
			line: 5, path: "listeners[1].name",
			msg: `duplicate listener name "web" (first at listeners[0])`,
		},
		{
			name: "two listeners on one address",
			yaml: strings.Replace(base, "upstreams:", "  - {name: web2, address: 127.0.0.1:7080, protocol: http}\nupstreams:", 1),
			line: 5, path: "listeners[1].address",
			msg: `address 127.0.0.1:7080 clashes with listener "web" (listeners[0], 127.0.0.1:7080)`,
		},
		{
			name: "wildcard listener takes the port",
			yaml: strings.Replace(base, "upstreams:", "  - {name: all, address: \"[::]:7080\", protocol: grpc}\nupstreams:", 1),
			line: 5, path: "listeners[1].address",
			msg: `address [::]:7080 clashes with listener "web"`,
		},
		{
			name: "unknown relay on a grpc listener",
			yaml: strings.Replace(base, "upstreams:", "  - {name: g, address: 127.0.0.1:7081, protocol: grpc, relay: whole}\nupstreams:", 1),
			line: 5, path: "listeners[1].relay",
			msg: `unknown relay "whole" (want frames or messages, or leave it out for the frame relay)`,
		},
		{
			name: "relay messages on an http listener",
			yaml: strings.Replace(base, "upstreams:", "  - {name: h, address: 127.0.0.1:7081, protocol: http, relay: messages}\nupstreams:", 1),
			line: 5, path: "listeners[1].relay",
			msg: `relay applies to grpc listeners only (listener "h" is http)`,
		},
		{
			name: "admin on non-loopback",
			yaml: base + "admin:\n  address: 10.0.0.1:9901\n",
			line: 14, path: "admin.address",
			msg: "10.0.0.1:9901 is not a loopback address; the admin server exposes config and traces, so set admin.allow_remote: true",
		},
		{
			name: "admin allowed host with a port",
			yaml: base + "admin:\n  allowed_hosts: [ok.example, \"hopwatch.svc:9901\"]\n",
			line: 14, path: "admin.allowed_hosts[1]",
			msg: `invalid host name "hopwatch.svc:9901": write the name only, without scheme or port`,
		},
		{
			name: "admin on all interfaces",
			yaml: base + "admin: {address: 0.0.0.0:9901}\n",
			line: 13, path: "admin.address",
			msg: "0.0.0.0:9901 is not a loopback address",
		},
		{
			name: "admin clashes with listener",
			yaml: base + "admin:\n  address: 127.0.0.1:7080\n",
			line: 14, path: "admin.address",
			msg: `address 127.0.0.1:7080 clashes with listener "web" (listeners[0], 127.0.0.1:7080)`,
		},
		{
			name: "default admin clashes with listener",
			yaml: strings.Replace(base, "127.0.0.1:7080", "127.0.0.1:9901", 1),
			line: 3, path: "listeners[0].address",
			msg: "clashes with the admin server (default admin.address 127.0.0.1:9901)",
		},
		{
			name: "telemetry sample ratio out of range",
			yaml: base + "telemetry:\n  tracing:\n    sample_ratio: 1.5\n",
			line: 15, path: "telemetry.tracing.sample_ratio",
			msg: "must be between 0 and 1",
		},
		{
			name: "telemetry unknown propagator",
			yaml: base + "telemetry:\n  tracing:\n    propagators: [tracecontext, jaeger]\n",
			line: 15, path: "telemetry.tracing.propagators[1]",
			msg: `unknown propagator "jaeger"`,
		},
		{
			name: "telemetry receive: otlp is a switch, nothing else",
			yaml: base + "telemetry:\n  receive:\n    otlp: true\n    grpc: true\n",
			line: 16, path: "telemetry.receive.grpc",
			msg: `unknown field "grpc"`,
		},
		{
			name: "telemetry otlp without endpoint",
			yaml: base + "telemetry:\n  tracing:\n    otlp: {protocol: http}\n",
			line: 15, path: "telemetry.tracing.otlp.endpoint",
			msg: "required",
		},
		{
			name: "conversation entry route unknown",
			yaml: base + "conversation:\n  entry_routes: [kb, chat]\n",
			line: 14, path: "conversation.entry_routes[1]",
			msg: `unknown route "chat"`,
		},
		{
			name: "conversation without entry routes",
			yaml: base + "conversation: {turn_slo: 2s}\n",
			line: 13, path: "conversation.entry_routes",
			msg: "required",
		},
		{
			name: "conversation session source unparsable",
			yaml: base + "conversation:\n  entry_routes: [kb]\n  session_from: [header:x-session-id, cookie:sid]\n",
			line: 15, path: "conversation.session_from[1]",
			msg: "unknown source",
		},
		{
			name: "conversation session from a gRPC message field that cannot be",
			yaml: base + "conversation:\n  entry_routes: [kb]\n  session_from:\n    - proto:0\n",
			line: 16, path: "conversation.session_from[0]",
			msg: "not a protobuf field number",
		},
		{
			name: "conversation bad duration",
			yaml: base + "conversation:\n  entry_routes: [kb]\n  idle_timeout: 15 minutes\n",
			line: 15, path: "conversation.idle_timeout",
			msg: "duration",
		},
		{
			name: "conversation unknown field",
			yaml: base + "conversation:\n  entry_routes: [kb]\n  repeat: {similarity: 0.8, lst: 3}\n",
			line: 15, path: "conversation.repeat.lst",
			msg: "unknown field",
		},
		{
			name: "conversation similarity out of range",
			yaml: base + "conversation:\n  entry_routes: [kb]\n  repeat:\n    similarity: 80\n",
			line: 16, path: "conversation.repeat.similarity",
			msg: "(0, 1]",
		},
		{
			name: "conversation hash_ids without a key",
			yaml: base + "conversation:\n  entry_routes: [kb]\n  hash_ids: true\n",
			line: 15, path: "conversation.hash_ids",
			msg: "needs hash_key_file",
		},
		{
			name: "conversation OTLP events without a collector",
			yaml: base + "conversation:\n  entry_routes: [kb]\n  events: {file: /var/log/turns.jsonl, otlp: true}\n",
			line: 15, path: "conversation.events.otlp",
			msg: "telemetry.tracing.otlp, which is not configured",
		},
		{
			name: "retry without conditions",
			yaml: base + "    retry: {attempts: 2, budget: 0.2}\n",
			line: 13, path: "routes[0].retry.on",
			msg: "at least one condition is required",
		},
		{
			name: "retry unknown condition",
			yaml: base + "    retry:\n      attempts: 2\n      on: [503, UNAVAILABLE]\n",
			line: 15, path: "routes[0].retry.on[1]",
			msg: `invalid retry condition "UNAVAILABLE": write unavailable`,
		},
		{
			name: "retry attempts out of range",
			yaml: base + "    retry: {attempts: 20, on: [5xx]}\n",
			line: 13, path: "routes[0].retry.attempts",
			msg: "attempts must be 1..10",
		},
		{
			name: "fallback static listed but missing",
			yaml: base + "    fallback:\n      after: 300ms\n      use: [cache, static]\n",
			line: 15, path: "routes[0].fallback.use[1]",
			msg: "static is listed but fallback.static is missing",
		},
		{
			name: "fallback without after",
			yaml: base + "    fallback:\n      use: [static]\n      static: {status: 503}\n",
			line: 13, path: "routes[0].fallback.after",
			msg: "after is required",
		},
		{
			name: "fallback to its own upstream",
			yaml: base + "    fallback: {after: 1s, use: [upstream], upstream: kb}\n",
			line: 13, path: "routes[0].fallback.upstream",
			msg: `the fallback upstream must differ from the route's own upstream "kb"`,
		},
		{
			name: "breaker ratio above one",
			yaml: upstreamLast + "    breaker:\n      window: 10s\n      failure_ratio: 50\n",
			line: 15, path: "upstreams[0].breaker.failure_ratio",
			msg: "must be in (0, 1] (0 means the default, 0.5)",
		},
		{
			name: "breaker slow ratio without slow call",
			yaml: upstreamLast + "    breaker: {slow_ratio: 0.8}\n",
			line: 13, path: "upstreams[0].breaker.slow_ratio",
			msg: "slow_ratio needs slow_call",
		},
		{
			name: "negative max_concurrent",
			yaml: upstreamLast + "    max_concurrent: -1\n",
			line: 13, path: "upstreams[0].max_concurrent",
			msg: "must not be negative (0 means unlimited)",
		},
		{
			name: "wrong kind mapping for list",
			yaml: base + "callers: {gateway: 1}\n",
			line: 13, path: "callers",
			msg: "expected a list, got a mapping",
		},
		{
			name: "wrong kind scalar for list",
			yaml: base + "callers: gateway\n",
			line: 13, path: "callers",
			msg: `expected a list, got "gateway" (write [gateway] for a single item)`,
		},
		{
			name: "wrong kind list for string",
			yaml: upstreamLast + "    balance: [round_robin]\n",
			line: 13, path: "upstreams[0].balance",
			msg: "expected a string, got a list",
		},
		{
			name: "wrong kind scalar for struct",
			yaml: base + "    match: /kb/\n",
			line: 13, path: "routes[0].match",
			msg: "expected a mapping with fields grpc_service, grpc_method, host, path_prefix, method, headers, got \"/kb/\"",
		},
		{
			// Not also "protocol is required": the decode error says it.
			name: "wrong kind is not repeated by validation",
			yaml: strings.Replace(base, "protocol: http\n", "protocol: [http]\n", 1),
			line: 4, path: "listeners[0].protocol",
			msg: "expected a string, got a list",
		},
		{
			name: "top-level merge of a scalar",
			yaml: base + "<<: oops\n",
			line: 13, path: "",
			msg: "<< merges a mapping or a list of mappings, got \"oops\"",
		},
		{
			name: "string for bool",
			yaml: base + "admin: {allow_remote: yes}\n",
			line: 13, path: "admin.allow_remote",
			msg: `expected true or false, got "yes"`,
		},
		{
			name: "float for int",
			yaml: upstreamLast + "    max_message_bytes: 1.5\n",
			line: 13, path: "upstreams[0].max_message_bytes",
			msg: "expected an integer, got 1.5",
		},
		{
			name: "duplicate key",
			yaml: base + "    upstream: kb\n",
			line: 13, path: "routes[0].upstream",
			msg: `duplicate key "upstream" (first at line 12)`,
		},
		{
			name: "multi-document",
			yaml: base + "---\nlisteners: []\n",
			line: 13, path: "",
			msg: "multiple YAML documents in one file",
		},
		{
			name: "alias bomb",
			yaml: aliasBomb,
			line: 23, path: "routes[0].match.headers",
			msg:   "document too large or alias expansion too deep",
			count: 2, // and x-anchors is an unknown field
		},
		{
			name: "merge cycle",
			yaml: base + "    match: &m {<<: *m}\n",
			line: 13, path: "routes[0].match",
			msg: "alias *m refers to itself",
		},
		{
			name: "custom tag",
			yaml: base + "    timeout: !secret 5s\n",
			line: 13, path: "routes[0].timeout",
			msg: "unsupported YAML tag !secret",
		},
		{
			name: "syntax error",
			yaml: base + "    match: {host: [kb\n",
			line: 13, path: "",
			msg: "invalid YAML: did not find expected ',' or ']'",
		},
		{
			name: "top level is a list",
			yaml: "- listeners\n- routes\n",
			line: 1, path: "",
			msg: "expected a mapping with fields admin, telemetry, listeners, callers, routes, upstreams, replay, conversation, access_log, genai, xds, got a list",
		},
		{
			name: "empty file",
			yaml: "",
			msg:  "config is empty",
		},
		{
			name: "comments only",
			yaml: "# nothing yet\n",
			msg:  "config is empty",
		},
		{
			name: "grpc method without slash",
			yaml: base + "    match: {grpc_method: bot.v1.NLU.Parse}\n",
			line: 13, path: "routes[0].match.grpc_method",
			msg: `invalid method "bot.v1.NLU.Parse": want /package.Service/Method`,
		},
		{
			name: "bad header name",
			yaml: base + "    match:\n      headers:\n        \"x session\": a\n",
			line: 15, path: "routes[0].match.headers.x session",
			msg: `invalid header name "x session"`,
		},
	}
}

// aliasBomb would expand to 9^9 header entries from a few hundred bytes:
// each level merges the previous one nine times. Lists of lists cannot
// expand (no field is a list of lists), so merges are the way to multiply.
const aliasBomb = `x-anchors:
  a: &a {k0: v, k1: v, k2: v, k3: v, k4: v, k5: v, k6: v, k7: v, k8: v}
  b: &b {<<: [*a, *a, *a, *a, *a, *a, *a, *a, *a]}
  c: &c {<<: [*b, *b, *b, *b, *b, *b, *b, *b, *b]}
  d: &d {<<: [*c, *c, *c, *c, *c, *c, *c, *c, *c]}
  e: &e {<<: [*d, *d, *d, *d, *d, *d, *d, *d, *d]}
  f: &f {<<: [*e, *e, *e, *e, *e, *e, *e, *e, *e]}
  g: &g {<<: [*f, *f, *f, *f, *f, *f, *f, *f, *f]}
  h: &h {<<: [*g, *g, *g, *g, *g, *g, *g, *g, *g]}
  i: &i {<<: [*h, *h, *h, *h, *h, *h, *h, *h, *h]}
` + base + "    match: {headers: *i}\n"

func TestParseInvalid(t *testing.T) {
	for _, tc := range invalidCases() {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse("hopwatch.yaml", []byte(tc.yaml))
			if cfg != nil {
				t.Errorf("Parse returned a config along with the error")
			}
			var errs config.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error = %v (%T), want config.Errors", err, err)
			}
			want := max(tc.count, 1)
			if len(errs) != want {
				t.Errorf("got %d errors, want %d:\n%v", len(errs), want, err)
			}
			for _, e := range errs {
				if e.Path == tc.path && e.Line == tc.line && strings.Contains(e.Msg, tc.msg) {
					if e.File != "hopwatch.yaml" {
						t.Errorf("File = %q, want hopwatch.yaml", e.File)
					}
					return
				}
			}
			t.Errorf("no error at line %d, path %q containing %q; got:\n%v", tc.line, tc.path, tc.msg, err)
		})
	}
}

func TestParseReportsEveryError(t *testing.T) {
	const file = `listeners:
  - name: web
    address: 127.0.0.1
    protocol: http
    colour: blue
upstreams:
  - name: kb
    protocol: tcp
    endpoints: [127.0.0.1:7201]
    dial_timeout: 3
routes:
  - name: kb
    listener: web
    upstream: kb2
    timeout: 2x
telemetry: {tracing: {sample_ratio: -1}}
`
	_, err := config.Parse("hopwatch.yaml", []byte(file))
	var errs config.Errors
	if !errors.As(err, &errs) {
		t.Fatalf("Parse error = %v, want config.Errors", err)
	}
	type at struct {
		line int
		path string
	}
	want := []at{
		{3, "listeners[0].address"},
		{5, "listeners[0].colour"},
		{8, "upstreams[0].protocol"},
		{10, "upstreams[0].dial_timeout"},
		{14, "routes[0].upstream"},
		{15, "routes[0].timeout"},
		{16, "telemetry.tracing.sample_ratio"},
	}
	var got []at
	for _, e := range errs {
		got = append(got, at{e.Line, e.Path})
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors at %v, want %v; full list:\n%v", got, want, err)
	}
	first := "hopwatch.yaml:3:5: listeners[0].address: invalid address \"127.0.0.1\""
	if !strings.HasPrefix(err.Error(), first) {
		t.Errorf("Error() starts %q, want prefix %q", strings.SplitN(err.Error(), "\n", 2)[0], first)
	}
}

const fullExample = `# The design document's example, without the sections not implemented yet.
admin:
  address: localhost:9901
listeners:
  - {name: bot-grpc, address: 127.0.0.1:7000, protocol: grpc, caller_header: x-hop-caller}
  - name: bot-http
    address: 127.0.0.1:7080
    protocol: http
    caller: gateway
    trusted_proxies: [10.0.0.0/8, 192.168.1.10]
    max_message_bytes: 1048576
callers: [client, gateway, nlu, dm, inference]
routes:
  - name: nlu
    listener: bot-grpc
    match: {grpc_service: bot.v1.NLU}
    upstream: nlu
    timeout: 2s
  - name: parse
    listener: bot-grpc
    match: {grpc_method: /bot.v1.NLU/Parse}
    upstream: nlu
    retry: null
  - name: kb-search
    listener: bot-http
    match:
      path_prefix: /kb/
      method: POST
      host: kb.example.com
      headers: {x-tenant: acme}
    upstream: kb
    timeout: 0
upstreams:
  - &defaults
    name: nlu
    protocol: grpc
    endpoints: [127.0.0.1:7101, 127.0.0.1:7102]
    balance: round_robin
    dial_timeout: 500ms
  - <<: *defaults
    name: kb
    protocol: http
    endpoints: ["kb.internal:8080"]
    balance:
`

func TestParseValid(t *testing.T) {
	cfg, err := config.Parse("hopwatch.yaml", []byte(fullExample))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &config.Config{
		Admin: config.Admin{Address: "localhost:9901"},
		Spec: routes.Spec{
			Listeners: []routes.Listener{
				{Name: "bot-grpc", Address: "127.0.0.1:7000", Protocol: "grpc", CallerHeader: "x-hop-caller",
					MaxMessageBytes: routes.DefaultMaxMessageBytes},
				{Name: "bot-http", Address: "127.0.0.1:7080", Protocol: "http", Caller: "gateway",
					TrustedProxies: []string{"10.0.0.0/8", "192.168.1.10"}, MaxMessageBytes: 1 << 20},
			},
			Callers: []string{"client", "gateway", "nlu", "dm", "inference"},
			Routes: []routes.Route{
				{Name: "nlu", Listener: "bot-grpc", Match: routes.Match{GRPCService: "bot.v1.NLU"}, Upstream: "nlu", Timeout: 2 * time.Second},
				{Name: "parse", Listener: "bot-grpc", Match: routes.Match{GRPCMethod: "/bot.v1.NLU/Parse"}, Upstream: "nlu"},
				{Name: "kb-search", Listener: "bot-http", Upstream: "kb", Match: routes.Match{
					PathPrefix: "/kb/", Method: "POST", Host: "kb.example.com", Headers: map[string]string{"x-tenant": "acme"}}},
			},
			Upstreams: []routes.Upstream{
				{Name: "nlu", Protocol: "grpc", Endpoints: []string{"127.0.0.1:7101", "127.0.0.1:7102"},
					Balance: "round_robin", DialTimeout: 500 * time.Millisecond, MaxMessageBytes: routes.DefaultMaxMessageBytes},
				// Merged from nlu, with balance: explicitly emptied back to
				// the default.
				{Name: "kb", Protocol: "http", Endpoints: []string{"kb.internal:8080"},
					Balance: "p2c_ewma", DialTimeout: 500 * time.Millisecond, MaxMessageBytes: routes.DefaultMaxMessageBytes},
			},
		},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("Parse =\n%+v\nwant\n%+v", cfg, want)
	}
}

func TestParseDefaults(t *testing.T) {
	cfg, err := config.Parse("min.yaml", []byte(base))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if cfg.Admin.Address != config.DefaultAdminAddress {
		t.Errorf("admin address = %q, want %q", cfg.Admin.Address, config.DefaultAdminAddress)
	}
	u := cfg.Upstreams[0]
	if u.Balance != routes.BalanceP2CEWMA || u.DialTimeout != routes.DefaultDialTimeout || u.MaxMessageBytes != routes.DefaultMaxMessageBytes {
		t.Errorf("upstream defaults = %q %v %d", u.Balance, u.DialTimeout, u.MaxMessageBytes)
	}
	if got := cfg.Listeners[0].MaxMessageBytes; got != routes.DefaultMaxMessageBytes {
		t.Errorf("listener max_message_bytes = %d, want %d", got, routes.DefaultMaxMessageBytes)
	}
	if cfg.AccessLog != (telemetry.AccessLogConfig{}) {
		t.Errorf("access log without output = %+v, want it off and untouched", cfg.AccessLog)
	}
	cfg, err = config.Parse("log.yaml", []byte(base+"access_log: {output: stdout}\n"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if l := cfg.AccessLog; l.QueueSize != telemetry.DefaultAccessLogQueue || l.SampleRatio == nil || *l.SampleRatio != 1 {
		t.Errorf("access log defaults = %+v", l)
	}
}

// conversationExample is the conversation section of design.md §3 as far
// as it is implemented (events and gRPC message sources come later).
const conversationExample = `conversation:
  entry_routes: [kb]
  session_from: [header:x-session-id, header:x-conversation-id, baggage:gen_ai.conversation.id, baggage:session.id, json:session_id]
  text_from: json:message
  verdict_header: x-bot-outcome
  turn_slo: 2s
  idle_timeout: 15m
  max_duration: 24h
  max_sessions: 100000
  repeat: {similarity: 0.8, last: 3}
  frustration_keywords: ["useless", "talk to a human"]
  hash_ids: true
  hash_key_file: /etc/hopwatch/session-key
  events: {file: "", otlp: false}
`

// TestParseConversationDefaults: a section with only entry routes comes
// back with every default written out, and a turn SLO per entry route.
func TestParseConversationDefaults(t *testing.T) {
	cfg, err := config.Parse("hopwatch.yaml", []byte(base+"conversation:\n  entry_routes: [kb]\n  turn_slo: 1500ms\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Conversation
	if c == nil {
		t.Fatal("no conversation section")
	}
	if c.IdleTimeout != conversation.DefaultIdleTimeout || c.MaxDuration != conversation.DefaultMaxDuration ||
		c.MaxSessions != conversation.DefaultMaxSessions || c.Repeat.Similarity != conversation.DefaultRepeatSimilarity ||
		c.Repeat.Last != conversation.DefaultRepeatLast || !reflect.DeepEqual(c.SessionFrom, conversation.DefaultSessionFrom) {
		t.Errorf("defaults not applied: %+v", *c)
	}
	if got := c.TurnSLOs(); !reflect.DeepEqual(got, map[string]time.Duration{"kb": 1500 * time.Millisecond}) {
		t.Errorf("TurnSLOs = %v", got)
	}
	cfg, err = config.Parse("hopwatch.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Conversation != nil {
		t.Errorf("absent section decoded as %+v", *cfg.Conversation)
	}
}

func TestParseAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
	}{
		{"admin remote when allowed", base + "admin: {address: 0.0.0.0:9901, allow_remote: true}\n"},
		{"admin on ipv6 loopback", base + "admin: {address: \"[::1]:9901\"}\n"},
		{"null sections", base + "telemetry: null\nconversation: ~\n"},
		{"otlp receiver", base + "telemetry: {receive: {otlp: true}}\n"},
		{"conversation, entry routes only", base + "conversation: {entry_routes: [kb]}\n"},
		{"conversation, every field", base + conversationExample},
		{"trailing document marker", base + "---\n"},
		{"leading document marker", "---\n" + base},
		{"zero duration", base + "    timeout: 0\n"},
		{"empty callers", base + "callers: []\n"},
		{"resilience as in the design", resilienceExample},
		{"breaker and bulkhead with defaults", upstreamLast + "    max_concurrent: 512\n    breaker: {}\n    outlier: {}\n"},
		{"retry", base + "    retry: {attempts: 2, on: [unavailable, 503, connect-failure], budget: 0.2}\n"},
		{"fallback from cache alone", base + "    fallback: {after: 300ms, use: [cache]}\n"},
		{"genai and access log", base + "    genai: {api: openai}\naccess_log: {output: stdout, slower_than: 1s, sample_ratio: 0.1, include_query: false, queue_size: 100}\n" +
			"genai:\n  models: [llama3.1:8b]\n  prices:\n    gpt-4o-mini: {input: 0.15, output: 0.6}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := config.Parse("hopwatch.yaml", []byte(tc.yaml)); err != nil {
				t.Errorf("Parse: %v", err)
			}
		})
	}
}

// resilienceExample is the design document's resilience configuration:
// retries on a gRPC route, an asynchronous fallback on an HTTP route, and a
// breaker and bulkhead on the upstreams.
const resilienceExample = `listeners:
  - {name: bot-grpc, address: 127.0.0.1:7000, protocol: grpc, caller_header: x-hop-caller}
  - {name: bot-http, address: 127.0.0.1:7080, protocol: http, caller: gateway}
routes:
  - name: nlu
    listener: bot-grpc
    match: {grpc_service: bot.v1.NLU}
    upstream: nlu
    timeout: 2s
    retry: {attempts: 2, on: [unavailable], budget: 0.2}
    fallback:
      after: 500ms
      use: [static]
      static: {grpc_code: unavailable, grpc_message: "nlu is slow, try again"}
  - name: kb-search
    listener: bot-http
    match: {path_prefix: /kb/, method: POST}
    upstream: kb
    timeout: 5s
    fallback:
      after: 300ms
      use: [cache, static, upstream]
      cache: {ttl: 10m, max_entries: 10000, max_bytes: 67108864, headers: [x-tenant]}
      static: {status: 200, content_type: application/json, body: '{"results":[],"degraded":true}'}
      upstream: kb-mirror
      background: {max_inflight: 64, timeout: 10s}
upstreams:
  - name: nlu
    protocol: grpc
    endpoints: [127.0.0.1:7101, 127.0.0.1:7102]
    max_concurrent: 512
    breaker: {window: 10s, min_requests: 20, failure_ratio: 0.5, slow_call: 1s, slow_ratio: 0.8, open_for: 5s, half_open_requests: 3}
    outlier: {consecutive_failures: 5, base_ejection: 10s, max_ejection: 5m, max_ejected_percent: 50}
  - {name: kb, protocol: http, endpoints: [127.0.0.1:7201]}
  - {name: kb-mirror, protocol: http, endpoints: [127.0.0.1:7202]}
`

// TestParseResilience checks that every resilience field decodes under its
// documented name.
func TestParseResilience(t *testing.T) {
	cfg, err := config.Parse("hopwatch.yaml", []byte(resilienceExample))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	nlu, kb := cfg.Routes[0], cfg.Routes[1]
	if want := (&routes.Retry{Attempts: 2, On: []string{"unavailable"}, Budget: 0.2}); !reflect.DeepEqual(nlu.Retry, want) {
		t.Errorf("routes[0].retry = %+v, want %+v", nlu.Retry, want)
	}
	if want := (&routes.FallbackStatic{GRPCCode: "unavailable", GRPCMessage: "nlu is slow, try again"}); !reflect.DeepEqual(nlu.Fallback.Static, want) {
		t.Errorf("routes[0].fallback.static = %+v, want %+v", nlu.Fallback.Static, want)
	}
	wantFB := &routes.Fallback{
		After: 300 * time.Millisecond,
		Use:   []string{"cache", "static", "upstream"},
		Cache: &routes.FallbackCache{TTL: 10 * time.Minute, MaxEntries: 10000, MaxBytes: 64 << 20, Headers: []string{"x-tenant"}},
		Static: &routes.FallbackStatic{Status: 200, ContentType: "application/json",
			Body: `{"results":[],"degraded":true}`},
		Upstream:   "kb-mirror",
		Background: &routes.FallbackBackground{MaxInflight: 64, Timeout: 10 * time.Second},
	}
	if !reflect.DeepEqual(kb.Fallback, wantFB) {
		t.Errorf("routes[1].fallback = %+v, want %+v", kb.Fallback, wantFB)
	}
	u := cfg.Upstreams[0]
	wantBreaker := &routes.Breaker{Window: 10 * time.Second, MinRequests: 20, FailureRatio: 0.5, SlowCall: time.Second,
		SlowRatio: 0.8, OpenFor: 5 * time.Second, HalfOpenRequests: 3}
	wantOutlier := &routes.Outlier{ConsecutiveFailures: 5, BaseEjection: 10 * time.Second, MaxEjection: 5 * time.Minute, MaxEjectedPercent: 50}
	if u.MaxConcurrent != 512 || !reflect.DeepEqual(u.Breaker, wantBreaker) || !reflect.DeepEqual(u.Outlier, wantOutlier) {
		t.Errorf("upstreams[0] = max_concurrent %d, breaker %+v, outlier %+v", u.MaxConcurrent, u.Breaker, u.Outlier)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hopwatch.yaml")
	if err := os.WriteFile(path, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(cfg.Routes) != 1 {
		t.Errorf("routes = %d, want 1", len(cfg.Routes))
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(base+"    timeout: 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = config.Load(bad)
	if want := bad + ":13:14: routes[0].timeout: invalid duration 5"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Load(bad) = %v, want prefix %q", err, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := config.Load(path)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load = %v, want fs.ErrNotExist", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestLoadTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.yaml")
	big := base + "# " + strings.Repeat("x", 5<<20) + "\n"
	if err := os.WriteFile(path, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := config.Load(path)
	var errs config.Errors
	if !errors.As(err, &errs) || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Load = %v, want a size error", err)
	}
}

func TestErrorString(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  config.Error
		want string
	}{
		{"full", config.Error{File: "h.yaml", Line: 3, Col: 5, Path: "routes[0].timeout", Msg: "bad"}, "h.yaml:3:5: routes[0].timeout: bad"},
		{"no column", config.Error{File: "h.yaml", Line: 3, Msg: "invalid YAML"}, "h.yaml:3: invalid YAML"},
		{"no position", config.Error{File: "h.yaml", Msg: "config is empty"}, "h.yaml: config is empty"},
		{"no file", config.Error{Path: "admin", Msg: "bad"}, "admin: bad"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.err.Error(); got != tc.want {
				t.Errorf("Error() = %q, want %q", got, tc.want)
			}
		})
	}
	errs := config.Errors{{File: "a", Line: 1, Msg: "x"}, {File: "a", Line: 2, Msg: "y"}}
	if got, want := errs.Error(), "a:1: x\na:2: y"; got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
}

// TestLoadNotRegular: Load refuses what is not a regular file, at once and
// with a clear error; a FIFO used to block it until a writer came along. A
// symlink to a regular file (Kubernetes ConfigMap mounts) still loads.
func TestLoadNotRegular(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("cannot make a FIFO here: %v", err)
	}
	linkToGood := filepath.Join(dir, "link-good.yaml")
	linkToFIFO := filepath.Join(dir, "link-fifo.yaml")
	if err := os.Symlink(good, linkToGood); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(fifo, linkToFIFO); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		ok         bool
	}{
		{"regular file", good, true},
		{"symlink to a regular file", linkToGood, true},
		{"FIFO", fifo, false},
		{"symlink to a FIFO", linkToFIFO, false},
		{"directory", dir, false},
		{"character device", "/dev/zero", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := config.Load(tc.path)
				done <- err
			}()
			select {
			case err := <-done:
				if tc.ok != (err == nil) {
					t.Fatalf("Load(%s) = %v, want ok=%v", tc.path, err, tc.ok)
				}
				if !tc.ok && (!errors.Is(err, config.ErrNotRegular) || !strings.Contains(err.Error(), tc.path)) {
					t.Fatalf("Load(%s) = %v, want ErrNotRegular naming the file", tc.path, err)
				}
			case <-time.After(5 * time.Second):
				// Unblock the open so that the goroutine ends.
				if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					w.Close()
				}
				<-done
				t.Fatalf("Load(%s) blocked", tc.path)
			}
		})
	}
}
