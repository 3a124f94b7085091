package config

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// sample exercises the decoder on kinds the Config does not all use yet.
type sample struct {
	S     string            `yaml:"s"`
	B     bool              `yaml:"b"`
	I     int               `yaml:"i"`
	I8    int8              `yaml:"i8"`
	F     float64           `yaml:"f"`
	D     time.Duration     `yaml:"d"`
	L     []string          `yaml:"l"`
	M     map[string]string `yaml:"m"`
	P     *inner            `yaml:"p"`
	Inner inner             `yaml:",inline"`
	Skip  string            `yaml:"-"`
	NoTag string
}

type inner struct {
	X int `yaml:"x"`
}

func decodeSample(t *testing.T, src string) (sample, Errors) {
	t.Helper()
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(src), &root); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	d := newDecoder("t.yaml")
	var s sample
	d.decode(root.Content[0], reflect.ValueOf(&s).Elem(), "")
	return s, d.errs
}

func TestDecodeKinds(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want sample
	}{
		{"string", `s: hello`, sample{S: "hello"}},
		{"number as string", `s: 1.10`, sample{S: "1.10"}},
		{"bool", `b: true`, sample{B: true}},
		{"int hex", `i: 0x1F`, sample{I: 31}},
		{"int underscore", `i: 1_000`, sample{I: 1000}},
		{"float from int", `f: 2`, sample{F: 2}},
		{"float", `f: 0.25`, sample{F: 0.25}},
		{"duration", `d: 1m30s`, sample{D: 90 * time.Second}},
		{"zero duration", `d: 0`, sample{}},
		{"flow list", `l: [a, "b c"]`, sample{L: []string{"a", "b c"}}},
		{"block list", "l:\n  - a\n  - b", sample{L: []string{"a", "b"}}},
		{"empty list", `l: []`, sample{L: []string{}}},
		{"map", `m: {a: "1", b: two}`, sample{M: map[string]string{"a": "1", "b": "two"}}},
		{"pointer", `p: {x: 3}`, sample{P: &inner{X: 3}}},
		{"null pointer", `p: null`, sample{}},
		{"inline", `x: 4`, sample{Inner: inner{X: 4}}},
		{"untagged field uses lowercase name", `notag: y`, sample{NoTag: "y"}},
		{"null string", `s: ~`, sample{}},
		{"alias", "s: &v shared\nm: {k: *v}", sample{S: "shared", M: map[string]string{"k": "shared"}}},
		{"merge: written keys win", "p: &p {x: 1}\nm: {k: v}\n<<: {s: merged, x: 9}\nx: 2",
			sample{S: "merged", P: &inner{X: 1}, M: map[string]string{"k": "v"}, Inner: inner{X: 2}}},
		{"merge list: first wins", "<<: [{s: first}, {s: second, b: true}]", sample{S: "first", B: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := decodeSample(t, tc.src)
			if len(errs) > 0 {
				t.Fatalf("errors: %v", errs)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		path string
		col  int
		msg  string
	}{
		{"skipped field is unknown", `skip: x`, "skip", 1, `unknown field "skip"`},
		{"int overflow", `i8: 300`, "i8", 5, "integer 300 is out of range"},
		{"int from string", `i: "3"`, "i", 4, `expected an integer, got "3"`},
		{"bool from int", `b: 1`, "b", 4, "expected true or false, got 1"},
		{"nan", `f: .nan`, "f", 4, "number .nan is out of range"},
		{"float from string", `f: fast`, "f", 4, `expected a number, got "fast"`},
		{"duration list", `d: [1s]`, "d", 4, "expected a duration such as 5s, got a list"},
		{"fractional duration without unit", `d: 1.5`, "d", 4, "durations need a unit, e.g. 1.5s"},
		{"map of lists", `m: {a: [1]}`, "m.a", 8, "expected a string, got a list"},
		{"list item kind", `l: [a, {b: c}]`, "l[1]", 8, "expected a string, got a mapping"},
		{"map key not scalar", `m: {[a]: b}`, "m", 5, "mapping keys must be plain names, got a list"},
		{"duplicate map key", "m: {a: x, a: y}", "m.a", 11, `duplicate key "a" (first at line 1)`},
		{"merge of scalar", `<<: x`, "", 5, "<< merges a mapping or a list of mappings"},
		{"binary tag", `s: !!binary aGk=`, "s", 4, "unsupported YAML tag !!binary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errs := decodeSample(t, tc.src)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1: %v", len(errs), errs)
			}
			e := errs[0]
			if e.Path != tc.path || e.Line != 1 || e.Col != tc.col || !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("got %v (path %q, col %d), want path %q at 1:%d containing %q", e, e.Path, e.Col, tc.path, tc.col, tc.msg)
			}
		})
	}
}

func TestDecodeBudget(t *testing.T) {
	var b strings.Builder
	b.WriteString("l:\n")
	for i := range maxNodes + 1 {
		b.WriteString("  - v" + strconv.Itoa(i) + "\n")
	}
	_, errs := decodeSample(t, b.String())
	if len(errs) != 1 || !strings.Contains(errs[0].Msg, "document too large") {
		t.Fatalf("errors = %v, want one budget error", errs)
	}
}

func TestLocate(t *testing.T) {
	d := newDecoder("t.yaml")
	d.pos[""] = position{1, 1}
	d.pos["routes"] = position{5, 1}
	d.pos["routes[1]"] = position{9, 5}
	d.pos["routes[1].match"] = position{11, 5}
	for path, want := range map[string]position{
		"routes[1].match.headers.x-a.b": {11, 5},
		"routes[1].upstream":            {9, 5},
		"routes[7].name":                {5, 1},
		"admin.address":                 {1, 1},
		"":                              {1, 1},
		"weird]":                        {1, 1},
	} {
		if got := d.locate(path); got != want {
			t.Errorf("locate(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestYAMLErrorLines(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		line int
	}{
		// A scanner error: yaml.v3 numbers these from 1.
		{"tab indentation", "a: 1\n\tb: 2\n", 2},
		// Parser errors: numbered from 0 by yaml.v3, reported from 1 here.
		{"unclosed flow list", "a: 1\nb: [1, 2\nc: 3\n", 2},
		{"bad block mapping", "a:\n  b: 1\n c: 2\n", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(tc.src))
			errs, ok := err.(Errors)
			if !ok || len(errs) != 1 {
				t.Fatalf("Parse = %v, want one error", err)
			}
			if errs[0].Line != tc.line {
				t.Errorf("line = %d, want %d (%v)", errs[0].Line, tc.line, errs[0])
			}
		})
	}
}
