package conversation_test

import (
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/conversation"
)

// TestBodyExtraction: the session id and the message from a JSON body,
// with session_from's order respected across headers and body.
func TestBodyExtraction(t *testing.T) {
	cases := []struct {
		name   string
		from   []string
		text   string
		h      headers
		body   string
		id     string
		source string
		repeat bool // the same body twice gives a repeat (text was read)
	}{
		{"top-level fields", []string{"json:session_id"}, "json:message", nil,
			`{"session_id":"abc","message":"where is my order"}`, "abc", "json", true},
		{"nested, in any order, spaces", []string{"json:metadata.thread_id"}, "json:input.text", nil,
			` { "input" : { "text" : "where is my order" , "lang":"en"}, "metadata": {"user":1, "thread_id": "t-9"} } `, "t-9", "json", true},
		{"numbers are ids, not text", []string{"json:conversation"}, "json:message", nil,
			`{"conversation": 12345, "message": 42}`, "12345", "json", false},
		{"escapes", []string{"json:sid"}, "json:msg", nil,
			`{"s\u0069d":"a\/b","msg":"caf\u00e9 \"where\" is my order"}`, "a/b", "json", true},
		{"keys inside strings and arrays do not count", []string{"json:session_id"}, "", nil,
			`{"note":"\"session_id\":\"fake\"","list":[{"session_id":"no"}],"session_id":"yes"}`, "yes", "json", false},
		{"the first of a duplicated key wins", []string{"json:sid"}, "", nil, `{"sid":"first","sid":"second"}`, "first", "json", false},
		{"a header listed first wins", []string{"header:x-session-id", "json:sid"}, "", headers{"x-session-id": "h"}, `{"sid":"b"}`, "h", "header", false},
		{"the body listed first wins", []string{"json:sid", "header:x-session-id"}, "", headers{"x-session-id": "h"}, `{"sid":"b"}`, "b", "json", false},
		{"absent in the body: the next source", []string{"json:sid", "header:x-session-id"}, "", headers{"x-session-id": "h"}, `{"other":1}`, "h", "header", false},
		{"not an object", []string{"json:sid"}, "", nil, `["sid","x"]`, "", "none", false},
		{"not JSON", []string{"json:sid"}, "", nil, `sid=x&message=hello`, "", "none", false},
		{"an object is not an id", []string{"json:sid"}, "", nil, `{"sid":{"a":"b"}}`, "", "none", false},
		{"cut in the middle: what came before counts", []string{"json:sid"}, "json:message", nil,
			`{"sid":"early","message":"where is my order","rest":"` + strings.Repeat("x", 100), "early", "json", true},
		{"cut inside the value: nothing", []string{"json:sid"}, "", nil, `{"sid":"abc`, "", "none", false},
		{"cut inside a number: nothing", []string{"json:sid"}, "", nil, `{"sid":123`, "", "none", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			tr := newTracker(t, conversation.Config{SessionFrom: tc.from, TextFrom: tc.text}, c)
			var get func(string) string
			if tc.h != nil {
				get = tc.h.get
			}
			turn := conversation.Turn{Route: "chat", Start: c.now(), Code: "200", HopOutcome: "ok", Header: get, Body: []byte(tc.body)}
			r1 := tr.Observe(turn)
			if r1.SessionID != tc.id || r1.Source != tc.source {
				t.Errorf("session %q from %q, want %q from %q", r1.SessionID, r1.Source, tc.id, tc.source)
			}
			if tc.id == "" {
				return
			}
			r2 := tr.Observe(turn)
			if got := r2.Signals.Has(conversation.SignalRepeat); got != tc.repeat {
				t.Errorf("repeat on the second turn: %v, want %v", got, tc.repeat)
			}
		})
	}
}

// TestDeepJSON: nesting beyond the scanner's bound is given up on, not
// recursed into without limit.
func TestDeepJSON(t *testing.T) {
	c := newClock()
	tr := newTracker(t, conversation.Config{SessionFrom: []string{"json:a.a.a", "json:sid"}}, c)
	deep := `{"x":` + strings.Repeat(`{"a":`, 100000) + `1` + strings.Repeat(`}`, 100000) + `,"sid":"s"}`
	if r := tr.Observe(conversation.Turn{Route: "chat", Start: c.now(), Code: "200", Body: []byte(deep)}); r.SessionID != "" {
		t.Errorf("got %q from a document deeper than the bound", r.SessionID)
	}
	deepPath := strings.Repeat(`{"a":`, 100000)
	tr.Observe(conversation.Turn{Route: "chat", Start: c.now(), Code: "200", Body: []byte(deepPath)})
}

func FuzzBodyExtraction(f *testing.F) {
	for _, s := range []string{`{"session_id":"abc","message":"hi there you"}`, `{"m":{"session_id":"x"}}`, `{"a":[1,{"b":"c"}],"session_id":7}`,
		`{"session_id":"\ud800"}`, `{`, `{"`, `{"session_id":`, `{"x":"\`} {
		f.Add([]byte(s))
	}
	cfg := conversation.Config{EntryRoutes: []string{"chat"}, SessionFrom: []string{"json:session_id", "json:m.session_id"}, TextFrom: "json:message"}
	tr, err := conversation.New(conversation.Options{Config: &cfg})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := tr.Observe(conversation.Turn{Route: "chat", Code: "200", HopOutcome: "ok", Body: body})
		if (r.SessionID == "") != (r.Source == conversation.SourceNone) || len(r.SessionID) > conversation.MaxSessionIDBytes {
			t.Fatalf("session %q source %q", r.SessionID, r.Source)
		}
		if r.SessionID != "" && !strings.Contains(string(body), "session_id") && !strings.Contains(string(body), `\u`) {
			t.Fatalf("session %q from a body without the key: %q", r.SessionID, body)
		}
	})
}

func BenchmarkBodyExtraction(b *testing.B) {
	cfg := conversation.Config{EntryRoutes: []string{"chat"}, SessionFrom: []string{"header:x-session-id", "json:session_id"}, TextFrom: "json:message"}
	c := newClock()
	tr, err := conversation.New(conversation.Options{Config: &cfg, Now: c.now})
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"model":"bot-1","session_id":"6b1f0c1e-8d7a-4a53-9a57-3c2f1d0e9b8a","stream":true,` +
		`"message":"hello, could you tell me where my order 12345 is right now? it was due yesterday","metadata":{"channel":"web","locale":"en-GB"}}`)
	get := headers{}.get
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		tr.Observe(conversation.Turn{Route: "chat", Start: c.now(), Duration: 1e6, Code: "200", HopOutcome: "ok", Header: get, Body: body})
	}
}
