package conversation_test

import (
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/conversation"
)

type headers map[string]string

func (h headers) get(k string) string { return h[k] }

// TestIdentify covers session_from: order (first match wins), header
// names case, baggage parsing, ids that are ignored.
func TestIdentify(t *testing.T) {
	cases := []struct {
		name   string
		from   []string
		h      headers
		id     string
		source string
	}{
		{"default: x-session-id", nil, headers{"x-session-id": "abc"}, "abc", "header"},
		{"default: header before baggage", nil, headers{"x-conversation-id": "h", "baggage": "session.id=b"}, "h", "header"},
		{"default: helicone", nil, headers{"helicone-session-id": "hel"}, "hel", "header"},
		{"default: gen_ai.conversation.id baggage", nil, headers{"baggage": "user.id=u, gen_ai.conversation.id=conv_5j66;p=1"}, "conv_5j66", "baggage"},
		{"default: session.id baggage, percent-encoded", nil, headers{"baggage": "session.id=a%2Fb"}, "a/b", "baggage"},
		{"default: nothing", nil, headers{"x-other": "x"}, "", "none"},
		{"configured order wins", []string{"baggage:session.id", "header:X-Session-Id"},
			headers{"x-session-id": "h", "baggage": "session.id=b"}, "b", "baggage"},
		{"header names are matched lowercase", []string{"header:X-Chat-ID"}, headers{"x-chat-id": "c1"}, "c1", "header"},
		{"an empty header falls through", nil, headers{"x-session-id": "  ", "x-conversation-id": "c"}, "c", "header"},
		{"an id with spaces is ignored", nil, headers{"x-session-id": "a b", "x-conversation-id": "c"}, "c", "header"},
		{"a too long id is ignored", nil, headers{"x-session-id": strings.Repeat("a", conversation.MaxSessionIDBytes+1)}, "", "none"},
		{"an id at the limit is kept", nil, headers{"x-session-id": strings.Repeat("a", conversation.MaxSessionIDBytes)},
			strings.Repeat("a", conversation.MaxSessionIDBytes), "header"},
		{"non-ASCII is ignored", nil, headers{"x-session-id": "sé"}, "", "none"},
		{"bad percent-encoding is ignored", nil, headers{"baggage": "session.id=%zz"}, "", "none"},
		{"baggage key must match exactly", nil, headers{"baggage": "xsession.id=1,session.idx=2"}, "", "none"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := conversation.New(conversation.Options{Config: &conversation.Config{EntryRoutes: []string{"chat"}, SessionFrom: tc.from}})
			if err != nil {
				t.Fatal(err)
			}
			id, src := tr.Identify(tc.h.get)
			if id != tc.id || src != tc.source {
				t.Errorf("got %q from %q, want %q from %q", id, src, tc.id, tc.source)
			}
		})
	}
}

// TestHashIDs: with hash_ids the raw id appears nowhere the tracker
// exposes; the hash is stable for one key and differs between keys.
func TestHashIDs(t *testing.T) {
	mk := func(key string) *conversation.Tracker {
		tr, err := conversation.New(conversation.Options{
			Config:  &conversation.Config{EntryRoutes: []string{"chat"}, HashIDs: true, HashKeyFile: "k"},
			HashKey: []byte(key),
		})
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	a, b := mk("0123456789abcdef"), mk("fedcba9876543210")
	h := headers{"x-session-id": "user-42@example.com"}
	ida, _ := a.Identify(h.get)
	ida2, _ := a.Identify(h.get)
	idb, _ := b.Identify(h.get)
	if ida != ida2 || ida == idb || len(ida) != 32 || strings.Contains(ida, "user-42") {
		t.Fatalf("hashes %q %q %q: want stable 32 hex digits per key, different across keys", ida, ida2, idb)
	}
	res := a.Observe(conversation.Turn{Route: "chat", SessionID: ida, Code: "200", HopOutcome: "ok"})
	if res.SessionID != ida {
		t.Errorf("turn session %q, want the hash", res.SessionID)
	}
	if _, err := conversation.New(conversation.Options{
		Config:  &conversation.Config{EntryRoutes: []string{"chat"}, HashIDs: true, HashKeyFile: "k"},
		HashKey: []byte("short"),
	}); err == nil {
		t.Error("a 5-byte key was accepted")
	}
}

// TestValidate covers every rule of the section, by field path.
func TestValidate(t *testing.T) {
	ok := func(c conversation.Config) conversation.Config {
		if c.EntryRoutes == nil {
			c.EntryRoutes = []string{"chat"}
		}
		return c
	}
	cases := []struct {
		name string
		cfg  conversation.Config
		path string // "" = valid
		msg  string
	}{
		{"minimal", ok(conversation.Config{}), "", ""},
		{"everything written", ok(conversation.Config{SessionFrom: []string{"header:x-a", "baggage:session.id"}, TurnSLO: 1,
			IdleTimeout: 1, MaxDuration: 1, MaxSessions: 5, Repeat: conversation.Repeat{Similarity: 0.9, Last: 8},
			FrustrationKeywords: []string{"useless"}, HashIDs: true, HashKeyFile: "/k"}), "", ""},
		{"no entry route", conversation.Config{EntryRoutes: []string{}}, "entry_routes", "required"},
		{"duplicate entry route", conversation.Config{EntryRoutes: []string{"a", "a"}}, "entry_routes[1]", "duplicate"},
		{"source without kind", ok(conversation.Config{SessionFrom: []string{"x-session-id"}}), "session_from[0]", "want header:NAME, baggage:KEY, json:PATH or proto:N"},
		{"unknown kind", ok(conversation.Config{SessionFrom: []string{"cookie:sid"}}), "session_from[0]", "unknown source"},
		{"empty name", ok(conversation.Config{SessionFrom: []string{"header:"}}), "session_from[0]", "want header:NAME"},
		{"bad header name", ok(conversation.Config{SessionFrom: []string{"header:x session"}}), "session_from[0]", "not a valid header name"},
		{"json source", ok(conversation.Config{SessionFrom: []string{"json:session_id", "json:metadata.thread_id"}}), "", ""},
		{"bad json path", ok(conversation.Config{SessionFrom: []string{"json:metadata..id"}}), "session_from[0]", "not a dotted path"},
		{"proto source", ok(conversation.Config{SessionFrom: []string{"proto:1", "header:x-session-id"}}), "", ""},
		{"proto field 0", ok(conversation.Config{SessionFrom: []string{"proto:0"}}), "session_from[0]", "not a protobuf field number"},
		{"proto field not a number", ok(conversation.Config{SessionFrom: []string{"proto:session_id"}}), "session_from[0]", "not a protobuf field number"},
		{"proto field too large", ok(conversation.Config{SessionFrom: []string{"proto:536870912"}}), "session_from[0]", "not a protobuf field number"},
		{"proto field reserved", ok(conversation.Config{SessionFrom: []string{"proto:19500"}}), "session_from[0]", "reserved range"},
		{"too many sources", ok(conversation.Config{SessionFrom: []string{"header:a1", "header:a2", "header:a3", "header:a4", "header:a5",
			"header:a6", "header:a7", "header:a8", "header:a9", "header:b1", "header:b2", "header:b3", "header:b4", "header:b5", "header:b6", "header:b7"}}),
			"session_from", "at most 15"},
		{"duplicate source", ok(conversation.Config{SessionFrom: []string{"header:a", "header:a"}}), "session_from[1]", "duplicate"},
		{"text_from json", ok(conversation.Config{TextFrom: "json:input.text"}), "", ""},
		{"text_from proto", ok(conversation.Config{TextFrom: "proto:2"}), "", ""},
		{"text_from bad field", ok(conversation.Config{TextFrom: "proto:-2"}), "text_from", "not a protobuf field number"},
		{"text_from unknown kind", ok(conversation.Config{TextFrom: "message"}), "text_from", "want json:PATH or proto:N"},
		{"text_from bad path", ok(conversation.Config{TextFrom: "json:"}), "text_from", "not a dotted path"},
		{"verdict header", ok(conversation.Config{VerdictHeader: "X-Verdict"}), "", ""},
		{"bad verdict header", ok(conversation.Config{VerdictHeader: "x verdict"}), "verdict_header", "not a valid header name"},
		{"negative slo", ok(conversation.Config{TurnSLO: -1}), "turn_slo", "negative"},
		{"negative idle", ok(conversation.Config{IdleTimeout: -1}), "idle_timeout", "negative"},
		{"negative max_duration", ok(conversation.Config{MaxDuration: -1}), "max_duration", "negative"},
		{"negative max_sessions", ok(conversation.Config{MaxSessions: -1}), "max_sessions", "between 1 and"},
		{"huge max_sessions", ok(conversation.Config{MaxSessions: conversation.MaxSessionsLimit + 1}), "max_sessions", "between 1 and"},
		{"similarity over 1", ok(conversation.Config{Repeat: conversation.Repeat{Similarity: 1.5}}), "repeat.similarity", "(0, 1]"},
		{"last over the limit", ok(conversation.Config{Repeat: conversation.Repeat{Last: conversation.MaxRepeatLast + 1}}), "repeat.last", "between 1 and"},
		{"keyword without words", ok(conversation.Config{FrustrationKeywords: []string{"ok", "?!"}}), "frustration_keywords[1]", "no word"},
		{"hash_ids without key", ok(conversation.Config{HashIDs: true}), "hash_ids", "needs hash_key_file"},
		{"key without hash_ids", ok(conversation.Config{HashKeyFile: "/k"}), "hash_key_file", "without hash_ids"},
		{"events file", ok(conversation.Config{Events: conversation.EventsConfig{File: "/tmp/e"}}), "", ""},
		{"events.otlp", ok(conversation.Config{Events: conversation.EventsConfig{OTLP: true}}), "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.cfg.Validate()
			if tc.path == "" {
				if len(errs) > 0 {
					t.Fatalf("errors %v, want none", errs)
				}
				return
			}
			if len(errs) != 1 || !strings.Contains(errs[tc.path], tc.msg) {
				t.Errorf("errors %v, want one at %s containing %q", errs, tc.path, tc.msg)
			}
		})
	}
}

// TestTurnSLOs: every entry route gets the turn SLO, default applied.
func TestTurnSLOs(t *testing.T) {
	c := conversation.Config{EntryRoutes: []string{"chat", "voice"}}
	if got := c.TurnSLOs(); len(got) != 2 || got["chat"] != conversation.DefaultTurnSLO || got["voice"] != conversation.DefaultTurnSLO {
		t.Errorf("TurnSLOs %v", got)
	}
	c.TurnSLO = 1500 * 1e6
	if got := c.TurnSLOs(); got["chat"] != c.TurnSLO {
		t.Errorf("TurnSLOs %v, want %v", got, c.TurnSLO)
	}
	var none *conversation.Config
	if none.TurnSLOs() != nil {
		t.Error("a nil section has turn SLOs")
	}
}

// TestHeaderKeys: the headers telemetry must copy for session_from.
func TestHeaderKeys(t *testing.T) {
	tr, err := conversation.New(conversation.Options{Config: &conversation.Config{EntryRoutes: []string{"chat"},
		SessionFrom: []string{"header:X-A", "baggage:session.id", "json:sid", "baggage:gen_ai.conversation.id", "header:x-b"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tr.HeaderKeys(), ","); got != "x-a,baggage,x-b" {
		t.Errorf("HeaderKeys %q, want x-a,baggage,x-b", got)
	}
}
