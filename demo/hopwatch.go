package demo

import (
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hopwatch/hopwatch/config"
)

// hopwatchYAML is deploy/examples/demo.yaml. go:embed cannot reach outside
// the package directory, so the package keeps a copy; a test fails when the
// two differ.
//
//go:generate cp ../deploy/examples/demo.yaml hopwatch.yaml
//go:embed hopwatch.yaml
var hopwatchYAML []byte

// ConfigFile is the name the demo's hopwatch configuration goes by in
// errors: the file a user would open to read or change it.
const ConfigFile = "deploy/examples/demo.yaml"

// Names in the demo's hopwatch configuration.
const (
	ListenerGRPC = "bot-grpc"
	ListenerHTTP = "bot-http"
	// EntryRoute is the route on which one request is one user turn.
	EntryRoute = "chat"
	// KBRoute is the route of the slow dependency, where -fallback applies.
	KBRoute = "kb"
)

// HopwatchYAML returns the demo's hopwatch configuration as written.
func HopwatchYAML() []byte { return slices.Clone(hopwatchYAML) }

// ErrFallbackUnavailable means Placement.Fallback asked for a fallback
// section that this build of hopwatch does not accept yet.
var ErrFallbackUnavailable = errors.New("fallback not available yet")

// Placement says where the demo's hopwatch runs. Empty addresses keep what
// the file says (127.0.0.1:7000, :7080 and :9901); tests use port 0.
type Placement struct {
	GRPC  string // address of the bot-grpc listener
	HTTP  string // address of the bot-http listener
	Admin string // address of the admin server
	// Fallback adds a fallback section to the KB route: answer from cache,
	// else a static degraded answer, when the KB is late by 300ms.
	Fallback bool
	// TurnSLO and IdleTimeout, when set, replace the conversation
	// section's turn_slo and idle_timeout; EventsFile, when set, its
	// events.file.
	TurnSLO     time.Duration
	IdleTimeout time.Duration
	EventsFile  string
	// OTLP, when set, is the host:port of an OTLP/gRPC collector that
	// hopwatch exports its spans to (telemetry.tracing.otlp), the one the
	// services export theirs to (Config.OTLP).
	OTLP string
	// Receive turns on hopwatch's OTLP receiver (telemetry.receive.otlp),
	// for the services' own spans (see Stack.ExportSpansTo).
	Receive bool
}

// kbFallback is the section Placement.Fallback adds, in the form the design
// documents for routes[].fallback.
const kbFallback = `
after: 300ms
use: [cache, static]
cache: {ttl: 10m, max_entries: 10000}
static: {status: 200, content_type: application/json, body: '{"results":[],"degraded":true}'}
background: {max_inflight: 64, timeout: 10s}
`

// HopwatchConfig parses the demo's configuration pointed at this stack's
// services and placed as p says.
func (s *Stack) HopwatchConfig(p Placement) (*config.Config, error) {
	return ParseHopwatchConfig(s.Endpoints(), p)
}

// ParseHopwatchConfig renders the demo configuration (RenderHopwatchConfig)
// and loads it with hopwatch's strict loader, so the demo runs on exactly
// what a user's file would be checked against. With p.Fallback, a loader
// that rejects the fallback section yields an error wrapping
// ErrFallbackUnavailable.
func ParseHopwatchConfig(endpoints map[string]string, p Placement) (*config.Config, error) {
	data, err := RenderHopwatchConfig(endpoints, p)
	if err != nil {
		return nil, err
	}
	cfg, err := config.Parse(ConfigFile, data)
	var errs config.Errors
	if p.Fallback && errors.As(err, &errs) {
		for _, e := range errs {
			if isFallbackPath(e.Path) {
				return nil, fmt.Errorf("%w: hopwatch rejects %s (%s); run with -fallback=off", ErrFallbackUnavailable, e.Path, e.Msg)
			}
		}
	}
	return cfg, err
}

// isFallbackPath reports whether a config error path is inside a route's
// fallback section: routes[4].fallback or below it.
func isFallbackPath(path string) bool {
	_, rest, ok := strings.Cut(path, "].fallback")
	return ok && strings.HasPrefix(path, "routes[") && (rest == "" || rest[0] == '.')
}

// RenderHopwatchConfig returns the demo configuration with the upstream
// endpoints replaced by endpoints (upstream name → host:port; upstreams not
// named keep the file's), the addresses of p applied, and the KB fallback
// added if asked for. It edits the YAML tree rather than filling a
// template, so the file stays a plain, valid hopwatch configuration and its
// comments survive into the rendered one.
func RenderHopwatchConfig(endpoints map[string]string, p Placement) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(hopwatchYAML, &doc); err != nil {
		return nil, fmt.Errorf("demo: embedded %s: %w", ConfigFile, err)
	}
	if len(doc.Content) == 0 {
		return nil, fmt.Errorf("demo: embedded %s is empty", ConfigFile)
	}
	root := doc.Content[0]
	if p.Admin != "" {
		admin := mapValue(root, "admin")
		if admin == nil || admin.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("demo: %s has no admin section", ConfigFile)
		}
		setField(admin, "address", p.Admin)
	}
	for name, addr := range map[string]string{ListenerGRPC: p.GRPC, ListenerHTTP: p.HTTP} {
		if addr == "" {
			continue
		}
		l := namedItem(mapValue(root, "listeners"), name)
		if l == nil {
			return nil, fmt.Errorf("demo: %s has no listener %q", ConfigFile, name)
		}
		setField(l, "address", addr)
	}
	for name, addr := range endpoints {
		u := namedItem(mapValue(root, "upstreams"), name)
		if u == nil {
			return nil, fmt.Errorf("demo: %s has no upstream %q", ConfigFile, name)
		}
		eps := mapValue(u, "endpoints")
		if eps == nil || eps.Kind != yaml.SequenceNode {
			return nil, fmt.Errorf("demo: %s: upstream %q has no endpoints list", ConfigFile, name)
		}
		eps.Content = []*yaml.Node{{Kind: yaml.ScalarNode, Tag: "!!str", Value: addr}}
	}
	if p.TurnSLO > 0 || p.IdleTimeout > 0 || p.EventsFile != "" {
		conv := mapValue(root, "conversation")
		if conv == nil || conv.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("demo: %s has no conversation section", ConfigFile)
		}
		if p.TurnSLO > 0 {
			setField(conv, "turn_slo", p.TurnSLO.String())
		}
		if p.IdleTimeout > 0 {
			setField(conv, "idle_timeout", p.IdleTimeout.String())
		}
		if p.EventsFile != "" {
			ev := mapValue(conv, "events")
			if ev == nil {
				conv.Content = append(conv.Content,
					&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "events"},
					&yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"})
				ev = conv.Content[len(conv.Content)-1]
			}
			setField(ev, "file", p.EventsFile)
		}
	}
	if p.OTLP != "" || p.Receive {
		var src []byte
		if p.OTLP != "" {
			src = fmt.Appendf(src, "tracing: {otlp: {endpoint: %q, protocol: grpc}}\n", p.OTLP)
		}
		if p.Receive {
			src = append(src, "receive: {otlp: true}\n"...)
		}
		var tel yaml.Node
		if err := yaml.Unmarshal(src, &tel); err != nil {
			return nil, fmt.Errorf("demo: telemetry section: %w", err)
		}
		if mapValue(root, "telemetry") != nil {
			return nil, fmt.Errorf("demo: %s already has a telemetry section", ConfigFile)
		}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "telemetry"}, tel.Content[0])
	}
	if p.Fallback {
		r := namedItem(mapValue(root, "routes"), KBRoute)
		if r == nil {
			return nil, fmt.Errorf("demo: %s has no route %q", ConfigFile, KBRoute)
		}
		var fb yaml.Node
		if err := yaml.Unmarshal([]byte(kbFallback), &fb); err != nil {
			return nil, fmt.Errorf("demo: fallback section: %w", err)
		}
		r.Content = append(r.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "fallback"}, fb.Content[0])
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, fmt.Errorf("demo: render %s: %w", ConfigFile, err)
	}
	return out, nil
}

// mapValue returns the value of key in mapping node m, or nil.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// namedItem returns the mapping in sequence s whose name is name, or nil.
func namedItem(s *yaml.Node, name string) *yaml.Node {
	if s == nil || s.Kind != yaml.SequenceNode {
		return nil
	}
	for _, item := range s.Content {
		if n := mapValue(item, "name"); n != nil && n.Value == name {
			return item
		}
	}
	return nil
}

// setField sets key to the string v in mapping m, adding the key if the
// file does not have it.
func setField(m *yaml.Node, key, v string) {
	if n := mapValue(m, key); n != nil {
		n.Kind, n.Tag, n.Value, n.Style, n.Content = yaml.ScalarNode, "!!str", v, 0, nil
		return
	}
	m.Content = append(m.Content,
		&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key},
		&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v})
}
