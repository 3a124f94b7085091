package conversation

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"google.golang.org/protobuf/encoding/protowire"
)

// msg builds a protobuf message from (number, value) pairs: strings as
// length-delimited fields, ints as varints.
func msg(pairs ...any) []byte {
	var b []byte
	for i := 0; i+1 < len(pairs); i += 2 {
		n := protowire.Number(pairs[i].(int))
		switch v := pairs[i+1].(type) {
		case string:
			b = protowire.AppendTag(b, n, protowire.BytesType)
			b = protowire.AppendString(b, v)
		case []byte:
			b = protowire.AppendTag(b, n, protowire.BytesType)
			b = protowire.AppendBytes(b, v)
		case int:
			b = protowire.AppendTag(b, n, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(v))
		case float64:
			b = protowire.AppendTag(b, n, protowire.Fixed64Type)
			b = protowire.AppendFixed64(b, uint64(v))
		}
	}
	return b
}

func TestExtractProto(t *testing.T) {
	full := msg(1, "sess-1", 2, "what are your opening hours", 3, 42)
	for _, tc := range []struct {
		name   string
		body   []byte
		fields []int
		want   []string
	}{
		{"two string fields", full, []int{1, 2}, []string{"sess-1", "what are your opening hours"}},
		{"order of the fields asked", full, []int{2, 1}, []string{"what are your opening hours", "sess-1"}},
		{"absent field", full, []int{7}, []string{""}},
		{"a varint under the number is not a string", full, []int{3}, []string{""}},
		{"fields after other wire types", msg(5, 7, 6, 2.5, 1, "s"), []int{1}, []string{"s"}},
		{"the last of a repeated field wins", msg(1, "a", 1, "b"), []int{1}, []string{"b"}},
		{"a nested message is not read into", msg(4, msg(1, "inner"), 1, "outer"), []int{1}, []string{"outer"}},
		{"invalid UTF-8 is not a string", msg(1, []byte{0xff, 0xfe}), []int{1}, []string{""}},
		{"cut short: what came before stays", full[:len(full)-6], []int{1, 2}, []string{"sess-1", ""}},
		{"garbage", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, []int{1}, []string{""}},
		{"empty", nil, []int{1}, []string{""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := extractProto(tc.body, tc.fields); !slices.Equal(got, tc.want) {
				t.Errorf("extractProto = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestIdentifyProto(t *testing.T) {
	srcs := []source{}
	for _, s := range []string{"header:x-session-id", "proto:1"} {
		src, err := parseSource(s)
		if err != nil {
			t.Fatal(err)
		}
		srcs = append(srcs, src)
	}
	d := newIdentifier(srcs, nil, 2, nil)
	if !d.readsBody() {
		t.Fatal("a proto source reads bodies")
	}
	body := msg(1, "sess-9", 2, "hello there friend")
	none := func(string) string { return "" }
	for _, tc := range []struct {
		name             string
		get              func(string) string
		body             []byte
		proto            bool
		id, source, text string
	}{
		{"from the message", none, body, true, "sess-9", SourceProto, "hello there friend"},
		{"a header comes first", func(k string) string {
			if k == "x-session-id" {
				return "hdr-1"
			}
			return ""
		}, body, true, "hdr-1", SourceHeader, "hello there friend"},
		{"a JSON body is not read as protobuf", none, []byte(`{"session_id":"x"}`), false, "", SourceNone, ""},
		{"no body", none, nil, true, "", SourceNone, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, src, text := d.read(tc.get, tc.body, tc.proto)
			if id != tc.id || src != tc.source || text != tc.text {
				t.Errorf("read = %q %q %q, want %q %q %q", id, src, text, tc.id, tc.source, tc.text)
			}
		})
	}
}

func FuzzExtractProto(f *testing.F) {
	f.Add(msg(1, "sess-1", 2, "hello", 3, 42))
	f.Add(msg(4, msg(1, "inner")))
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		vals := extractProto(b, []int{1, 2})
		if len(vals) != 2 {
			t.Fatalf("%d values for 2 fields", len(vals))
		}
		// Appending a well-formed field 1 after a complete message must
		// be what is read for it.
		if _, _, n := protowire.ConsumeField(b); n == len(b) && len(b) > 0 {
			if got := extractProto(append(append([]byte{}, b...), msg(1, "last")...), []int{1}); got[0] != "last" {
				t.Fatalf("field 1 appended to %x reads %q", b, got[0])
			}
		}
	})
}

// TestNamesFull: past maxNames every new name is "other", which the table
// always holds (it used to recurse forever when "other" had not been seen).
func TestNamesFull(t *testing.T) {
	var n names
	for i := 0; len(n.list) < maxNames; i++ {
		n.id(fmt.Sprint("route-", i))
	}
	if got := n.name(n.id("one-more")); got != otherName {
		t.Errorf("a name past the bound is %q, want %q", got, otherName)
	}
	if got := n.name(n.id("route-3")); got != "route-3" {
		t.Errorf("a known name is %q", got)
	}
	if n.id("") != 0 || n.name(n.id(otherName)) != otherName {
		t.Error(`"" and "other" keep their places`)
	}
}

// TestSessionIDIsACopy: a session id read from a header does not keep the
// header's memory.
func TestSessionIDIsACopy(t *testing.T) {
	src, err := parseSource("baggage:session.id")
	if err != nil {
		t.Fatal(err)
	}
	d := newIdentifier([]source{src}, nil, 0, nil)
	bag := "session.id=s-1," + strings.Repeat("k=v,", 1000)
	id, _, _ := d.read(func(string) string { return bag }, nil, false)
	if id != "s-1" {
		t.Fatalf("id %q", id)
	}
	if unsafe.StringData(id) == unsafe.StringData(bag[len("session.id="):]) {
		t.Error("the id shares the header's bytes")
	}
}
