package conversation

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Config is the conversation section of the configuration file, as
// written. A nil *Config (section absent) turns conversation signals off.
// Zero values are the documented defaults below.
type Config struct {
	// EntryRoutes names the routes whose requests are user turns: one
	// request on one of them is one turn (required, at least one).
	EntryRoutes []string `yaml:"entry_routes"`
	// SessionFrom lists where the session id is read, first match wins:
	// "header:NAME" (an HTTP header or gRPC metadata key), "baggage:KEY"
	// (a W3C baggage member), "json:PATH" (a string or number at a dotted
	// path of the entry request's JSON body, HTTP) or "proto:N" (a
	// top-level string field of the first request message of a gRPC entry
	// call, by field number; no schema needed). Default DefaultSessionFrom.
	SessionFrom []string `yaml:"session_from"`
	// TextFrom says where the user's message is in the entry request:
	// "json:PATH" (an HTTP JSON body) or "proto:N" (a top-level string field
	// of a gRPC request message). It is fingerprinted for repeats and matched
	// against keywords, never stored. Empty: no text, no text signals.
	TextFrom string `yaml:"text_from"`
	// VerdictHeader is the response header (HTTP hops) in which a service
	// gives its own verdict on the turn: no_match, handoff, resolved. It
	// is read on every hop of the turn and removed before the response
	// leaves hopwatch (default DefaultVerdictHeader).
	VerdictHeader string `yaml:"verdict_header"`
	// TurnSLO: a turn whose answer starts later than this is slow
	// (default DefaultTurnSLO).
	TurnSLO time.Duration `yaml:"turn_slo"`
	// IdleTimeout ends a session this long after its last turn (default
	// DefaultIdleTimeout).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxDuration ends a session this long after its first turn (default
	// DefaultMaxDuration); the next turn starts a new one.
	MaxDuration time.Duration `yaml:"max_duration"`
	// MaxSessions bounds the sessions tracked at once (default
	// DefaultMaxSessions); beyond it the least recently active one ends as
	// "evicted".
	MaxSessions int `yaml:"max_sessions"`
	// Repeat tunes repeat detection.
	Repeat Repeat `yaml:"repeat"`
	// FrustrationKeywords are words or phrases whose presence in a message
	// flags it (case-insensitive, whole words). Empty (default): off.
	FrustrationKeywords []string `yaml:"frustration_keywords"`
	// HashIDs replaces every session id by a keyed hash (HMAC-SHA256 with
	// the key in HashKeyFile) before it is kept, put on spans or served.
	HashIDs bool `yaml:"hash_ids"`
	// HashKeyFile holds the HMAC key (at least MinHashKeyBytes bytes);
	// required with hash_ids.
	HashKeyFile string `yaml:"hash_key_file"`
	// Events exports turn and session events.
	Events EventsConfig `yaml:"events"`
}

// Repeat tunes repeat detection.
type Repeat struct {
	// Similarity is the fingerprint similarity (0 < s ≤ 1) at or above
	// which two messages are the same question (default
	// DefaultRepeatSimilarity).
	Similarity float64 `yaml:"similarity"`
	// Last is how many of the session's previous messages a new one is
	// compared with (1..MaxRepeatLast, default DefaultRepeatLast).
	Last int `yaml:"last"`
}

// EventsConfig configures turn and session events for fleets.
type EventsConfig struct {
	// File receives the events as JSON lines, appended ("-": standard
	// output; "": none).
	File string `yaml:"file"`
	// OTLP also sends them as OTLP log records, with the same fields as
	// attributes, to the collector of telemetry.tracing.otlp (required).
	OTLP bool `yaml:"otlp"`
}

// Defaults and limits.
const (
	DefaultTurnSLO          = 2 * time.Second
	DefaultIdleTimeout      = 15 * time.Minute
	DefaultMaxDuration      = 24 * time.Hour
	DefaultMaxSessions      = 100_000
	DefaultRepeatSimilarity = 0.8
	DefaultRepeatLast       = 3
	// MaxRepeatLast bounds Repeat.Last: the fingerprints of a session are
	// a fixed array of this size.
	MaxRepeatLast = 8
	// MaxSessionsLimit keeps max_sessions to what fits comfortably in memory
	// (a session costs well under 1 KiB).
	MaxSessionsLimit = 10_000_000
	// MinHashKeyBytes is the shortest accepted HMAC key (128 bits).
	MinHashKeyBytes = 16
	// FrustratedSignals is how many repeat and frustration signals in one
	// session make it "frustrated".
	FrustratedSignals = 2
	// DefaultVerdictHeader carries service verdicts.
	DefaultVerdictHeader = "x-bot-outcome"
)

// DefaultSessionFrom is where session ids are looked for when session_from
// is not written: the headers chat gateways and LLM tools use, then the
// OpenTelemetry GenAI and general session baggage keys.
var DefaultSessionFrom = []string{
	"header:x-session-id",
	"header:x-conversation-id",
	"header:helicone-session-id",
	"baggage:gen_ai.conversation.id",
	"baggage:session.id",
}

// Identity sources (the source label of hopwatch_conversation_identity_total).
const (
	SourceHeader  = "header"
	SourceBaggage = "baggage"
	SourceJSON    = "json"
	SourceProto   = "proto"
	SourceNone    = "none"
)

// source is one parsed session_from entry.
type source struct {
	kind  string   // SourceHeader, SourceBaggage, SourceJSON or SourceProto
	key   string   // header name lowercased, baggage key, JSON path or field number as written
	path  jsonPath // SourceJSON
	field int      // SourceProto
}

func parseSource(s string) (source, error) {
	kind, key, ok := strings.Cut(s, ":")
	if !ok || key == "" {
		return source{}, fmt.Errorf("%q: want header:NAME, baggage:KEY, json:PATH or proto:N", s)
	}
	switch kind {
	case SourceHeader:
		if !validToken(key) {
			return source{}, fmt.Errorf("%q: %q is not a valid header name", s, key)
		}
		return source{kind: kind, key: strings.ToLower(key)}, nil
	case SourceBaggage:
		if !validToken(key) {
			return source{}, fmt.Errorf("%q: %q is not a valid baggage key", s, key)
		}
		return source{kind: kind, key: key}, nil
	case SourceJSON:
		p, ok := parseJSONPath(key)
		if !ok {
			return source{}, fmt.Errorf("%q: %q is not a dotted path of object keys (like session_id or metadata.thread_id)", s, key)
		}
		return source{kind: kind, key: key, path: p}, nil
	case SourceProto:
		n, err := parseField(key)
		if err != nil {
			return source{}, fmt.Errorf("%q: %w", s, err)
		}
		return source{kind: kind, key: key, field: n}, nil
	}
	return source{}, fmt.Errorf("%q: unknown source %q (want header:NAME, baggage:KEY, json:PATH or proto:N)", s, kind)
}

// parseTextFrom reads text_from: a JSON path, or a protobuf field number.
func parseTextFrom(s string) (jsonPath, int, error) {
	kind, key, _ := strings.Cut(s, ":")
	switch kind {
	case SourceJSON:
		if p, ok := parseJSONPath(key); ok {
			return p, 0, nil
		}
		return nil, 0, fmt.Errorf("%q: %q is not a dotted path of object keys (like message or input.text)", s, key)
	case SourceProto:
		n, err := parseField(key)
		if err != nil {
			return nil, 0, fmt.Errorf("%q: %w", s, err)
		}
		return nil, n, nil
	}
	return nil, 0, fmt.Errorf("%q: want json:PATH or proto:N", s)
}

// parseField reads a protobuf field number: 1..2^29-1, outside the range
// reserved for the implementation (19000-19999).
func parseField(s string) (int, error) {
	n, err := strconv.Atoi(s)
	switch {
	case err != nil || n < 1 || n > int(protowire.MaxValidNumber):
		return 0, fmt.Errorf("%q is not a protobuf field number (1..%d)", s, protowire.MaxValidNumber)
	case n >= int(protowire.FirstReservedNumber) && n <= int(protowire.LastReservedNumber):
		return 0, fmt.Errorf("%d is in the reserved range %d-%d", n, protowire.FirstReservedNumber, protowire.LastReservedNumber)
	}
	return n, nil
}

// validToken reports an RFC 9110 §5.6.2 token: header names and W3C
// baggage keys are both tokens.
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

// Validate reports problems as field paths relative to "conversation".
// Whether entry routes exist is for the caller, which knows the routes.
func (c *Config) Validate() map[string]string {
	errs := map[string]string{}
	if len(c.EntryRoutes) == 0 {
		errs["entry_routes"] = "required: name at least one route whose requests are user turns"
	}
	seen := map[string]bool{}
	for i, r := range c.EntryRoutes {
		if seen[r] {
			errs[pathIndex("entry_routes", i)] = fmt.Sprintf("duplicate entry route %q", r)
		}
		seen[r] = true
	}
	seenSrc := map[string]bool{}
	for i, s := range c.SessionFrom {
		if _, err := parseSource(s); err != nil {
			errs[pathIndex("session_from", i)] = err.Error()
		} else if seenSrc[s] {
			errs[pathIndex("session_from", i)] = fmt.Sprintf("duplicate source %q", s)
		}
		seenSrc[s] = true
	}
	if len(c.SessionFrom) > maxJSONPaths-1 {
		errs["session_from"] = fmt.Sprintf("at most %d sources", maxJSONPaths-1)
	}
	if c.TextFrom != "" {
		if _, _, err := parseTextFrom(c.TextFrom); err != nil {
			errs["text_from"] = err.Error()
		}
	}
	if c.VerdictHeader != "" && !validToken(c.VerdictHeader) {
		errs["verdict_header"] = fmt.Sprintf("%q is not a valid header name", c.VerdictHeader)
	}
	for name, d := range map[string]time.Duration{"turn_slo": c.TurnSLO, "idle_timeout": c.IdleTimeout, "max_duration": c.MaxDuration} {
		if d < 0 {
			errs[name] = "must not be negative"
		}
	}
	if c.MaxSessions < 0 || c.MaxSessions > MaxSessionsLimit {
		errs["max_sessions"] = fmt.Sprintf("must be between 1 and %d (0: default %d)", MaxSessionsLimit, DefaultMaxSessions)
	}
	if s := c.Repeat.Similarity; s < 0 || s > 1 {
		errs["repeat.similarity"] = fmt.Sprintf("must be in (0, 1] (0: default %v)", DefaultRepeatSimilarity)
	}
	if n := c.Repeat.Last; n < 0 || n > MaxRepeatLast {
		errs["repeat.last"] = fmt.Sprintf("must be between 1 and %d (0: default %d)", MaxRepeatLast, DefaultRepeatLast)
	}
	for i, k := range c.FrustrationKeywords {
		if len(normalizeKeyword(k)) == 0 {
			errs[pathIndex("frustration_keywords", i)] = "has no word in it"
		}
	}
	if c.HashIDs && c.HashKeyFile == "" {
		errs["hash_ids"] = "needs hash_key_file: a file holding the secret key (at least 16 bytes)"
	}
	if !c.HashIDs && c.HashKeyFile != "" {
		errs["hash_key_file"] = "set without hash_ids: true; ids would be kept in clear"
	}
	return errs
}

// TurnSLOs returns the turn SLO of each entry route, defaults applied, for
// the slow-trace analysis of those routes.
func (c *Config) TurnSLOs() map[string]time.Duration {
	if c == nil {
		return nil
	}
	m := make(map[string]time.Duration, len(c.EntryRoutes))
	for _, r := range c.EntryRoutes {
		m[r] = orDefault(c.TurnSLO, DefaultTurnSLO)
	}
	return m
}

// WithDefaults returns a copy with every defaulted field written out, for
// showing the effective configuration.
func (c Config) WithDefaults() Config {
	if len(c.SessionFrom) == 0 {
		c.SessionFrom = append([]string(nil), DefaultSessionFrom...)
	}
	c.TurnSLO = orDefault(c.TurnSLO, DefaultTurnSLO)
	c.IdleTimeout = orDefault(c.IdleTimeout, DefaultIdleTimeout)
	c.MaxDuration = orDefault(c.MaxDuration, DefaultMaxDuration)
	if c.MaxSessions == 0 {
		c.MaxSessions = DefaultMaxSessions
	}
	if c.Repeat.Similarity == 0 {
		c.Repeat.Similarity = DefaultRepeatSimilarity
	}
	if c.Repeat.Last == 0 {
		c.Repeat.Last = DefaultRepeatLast
	}
	if c.VerdictHeader == "" {
		c.VerdictHeader = DefaultVerdictHeader
	}
	return c
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func pathIndex(p string, i int) string {
	return p + "[" + strconv.Itoa(i) + "]"
}
