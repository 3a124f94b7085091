package conversation_test

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/hopwatch/hopwatch/conversation"
)

// FuzzIdentify: any header value yields a valid id or none, never a panic.
func FuzzIdentify(f *testing.F) {
	for _, s := range []string{"session.id=a", "a=b;c, session.id = x%20y ;p", "session.id=%", ",,,=;", "session.id=" + strings.Repeat("z", 300)} {
		f.Add("hdr", s)
	}
	tr, err := conversation.New(conversation.Options{Config: &conversation.Config{EntryRoutes: []string{"chat"}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, header, baggage string) {
		id, src := tr.Identify(headers{"x-session-id": header, "baggage": baggage}.get)
		if (id == "") != (src == conversation.SourceNone) || len(id) > conversation.MaxSessionIDBytes {
			t.Fatalf("id %q source %q", id, src)
		}
		for i := 0; i < len(id); i++ {
			if id[i] <= ' ' || id[i] > '~' {
				t.Fatalf("id %q has byte %#x", id, id[i])
			}
		}
	})
}

// FuzzFingerprint: deterministic, and blind to ASCII case and to
// punctuation between words.
func FuzzFingerprint(f *testing.F) {
	for _, s := range []string{"", "where is my order?", "Это бесполезно", "\xff\xfe", "a-b_c d"} {
		f.Add(s)
	}
	fp := conversation.NewFingerprinter([]string{"useless"})
	f.Fuzz(func(t *testing.T, s string) {
		h := fp.Fingerprint(s)
		if fp.Fingerprint(s) != h {
			t.Fatal("not deterministic")
		}
		if utf8.ValidString(s) && len(s) <= conversation.MaxFingerprintBytes {
			if up := string(bytes.ToUpper([]byte(s))); isASCII(s) && fp.Fingerprint(up) != h {
				t.Fatalf("%q and %q differ", s, up)
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
