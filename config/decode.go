package config

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// maxNodes bounds the values one decode may visit, alias expansions
// included. Real files have a few thousand; the cap stops a few hundred
// bytes of nested aliases ("billion laughs") from expanding into billions.
const maxNodes = 100_000

type position struct{ line, col int }

// decoder decodes a yaml.Node tree into Go values by their yaml struct tags,
// strictly, collecting every error instead of stopping at the first. It
// exists because yaml.Unmarshal's errors carry a line but no field path,
// its alias defence is a ratio heuristic rather than a hard bound, and the
// path → position map that places validation errors has to be built while
// walking the tree anyway.
type decoder struct {
	file string
	errs Errors
	// pos records where each field path was first written, so that errors
	// found later from paths alone (validation) get a line.
	pos map[string]position
	// failed holds paths whose value did not decode; validation errors at
	// or below them would only repeat the problem.
	failed map[string]bool

	budget  int
	aborted bool
	// expanding holds the anchors being expanded, to refuse cycles; outer is
	// the outermost alias being followed, where a blown budget is reported
	// since the node deep inside the expansion says nothing useful.
	expanding map[*yaml.Node]bool
	outer     *yaml.Node
	outerPath string

	structs map[reflect.Type]*structFields
}

func newDecoder(file string) *decoder {
	return &decoder{
		file:      file,
		pos:       make(map[string]position),
		failed:    make(map[string]bool),
		budget:    maxNodes,
		expanding: make(map[*yaml.Node]bool),
		structs:   make(map[reflect.Type]*structFields),
	}
}

// fail reports a value that could not be decoded at path.
func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.report(n, path, format, args...)
	d.failed[path] = true
}

// report records an error at n without marking path as failed (unknown
// fields: the path names nothing that validation would look at).
func (d *decoder) report(n *yaml.Node, path, format string, args ...any) {
	d.errs = append(d.errs, Error{File: d.file, Line: n.Line, Col: n.Column, Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) record(path string, n *yaml.Node) {
	if _, ok := d.pos[path]; !ok {
		d.pos[path] = position{n.Line, n.Column}
	}
}

// locate finds the position of the closest recorded ancestor of path:
// routes[2].upstream, then routes[2], then routes, then the document.
func (d *decoder) locate(path string) position {
	for p := path; ; p = parentPath(p) {
		if at, ok := d.pos[p]; ok {
			return at
		}
		if p == "" {
			return position{}
		}
	}
}

func parentPath(p string) string {
	if strings.HasSuffix(p, "]") {
		if i := strings.LastIndexByte(p, '['); i >= 0 {
			return p[:i]
		}
	}
	if i := strings.LastIndexByte(p, '.'); i >= 0 {
		return p[:i]
	}
	return ""
}

func (d *decoder) decodeFailedAt(path string) bool {
	for p := path; ; p = parentPath(p) {
		if d.failed[p] {
			return true
		}
		if p == "" {
			return false
		}
	}
}

// spend charges one node against the budget and reports when it runs out.
func (d *decoder) spend(n *yaml.Node, path string) bool {
	if d.aborted {
		return false
	}
	if d.budget--; d.budget >= 0 {
		return true
	}
	d.aborted = true
	if d.outer != nil {
		n, path = d.outer, d.outerPath
	}
	d.fail(n, path, "document too large or alias expansion too deep (over %d values)", maxNodes)
	return false
}

// follow calls fn with the target of alias n, refusing cycles.
func (d *decoder) follow(n *yaml.Node, path string, fn func(target *yaml.Node)) {
	t := n.Alias
	if t == nil {
		d.fail(n, path, "unknown anchor %q", n.Value)
		return
	}
	if d.expanding[t] {
		d.fail(n, path, "alias *%s refers to itself", n.Value)
		return
	}
	if d.outer == nil {
		d.outer, d.outerPath = n, path
		defer func() { d.outer, d.outerPath = nil, "" }()
	}
	d.expanding[t] = true
	defer delete(d.expanding, t)
	fn(t)
}

// decode decodes n into v; path is n's field path (routes[0].timeout).
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if !d.spend(n, path) {
		return
	}
	d.record(path, n)
	if n.Kind == yaml.AliasNode {
		d.follow(n, path, func(t *yaml.Node) { d.decode(t, v, path) })
		return
	}
	if tag := n.ShortTag(); !knownTag(tag) {
		d.fail(n, path, "unsupported YAML tag %s", tag)
		return
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		v.SetZero()
		return
	}
	d.value(n, v, path)
}

// knownTag accepts the YAML core schema. Other tags (!!binary, !custom)
// would change a value's meaning in ways this decoder does not implement.
func knownTag(tag string) bool {
	switch tag {
	case "!!str", "!!int", "!!float", "!!bool", "!!null", "!!timestamp", "!!map", "!!seq":
		return true
	}
	return false
}

// value decodes a non-null, non-alias node by v's type.
func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	if v.Type() == reflect.TypeFor[time.Duration]() {
		d.duration(n, v, path)
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.Type().Elem() == reflect.TypeFor[Section]() {
			// Present is all that matters; its content is never read, so
			// aliases inside it are never expanded.
			v.Set(reflect.New(v.Type().Elem()))
			return
		}
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.value(n, v.Elem(), path)
	case reflect.Struct:
		d.structure(n, v, path)
	case reflect.Slice:
		d.sequence(n, v, path)
	case reflect.Map:
		d.mapping(n, v, path)
	case reflect.String:
		if d.isScalar(n, path, "a string") {
			v.SetString(n.Value)
		}
	case reflect.Bool:
		var b bool
		if !d.isScalar(n, path, "true or false") {
			return
		}
		if n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
			d.fail(n, path, "expected true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		var i int64
		if !d.isScalar(n, path, "an integer") {
			return
		}
		if n.ShortTag() != "!!int" {
			d.fail(n, path, "expected an integer, got %s", describe(n))
			return
		}
		if n.Decode(&i) != nil || v.OverflowInt(i) {
			d.fail(n, path, "integer %s is out of range", clip(n.Value))
			return
		}
		v.SetInt(i)
	case reflect.Float32, reflect.Float64:
		var f float64
		if !d.isScalar(n, path, "a number") {
			return
		}
		if tag := n.ShortTag(); tag != "!!float" && tag != "!!int" || n.Decode(&f) != nil {
			d.fail(n, path, "expected a number, got %s", describe(n))
			return
		}
		if math.IsNaN(f) || math.IsInf(f, 0) || v.OverflowFloat(f) {
			d.fail(n, path, "number %s is out of range", clip(n.Value))
			return
		}
		v.SetFloat(f)
	default:
		// Only reachable by adding a field of a new type to the config.
		d.fail(n, path, "internal error: cannot decode into %s", v.Type())
	}
}

func (d *decoder) isScalar(n *yaml.Node, path, want string) bool {
	if n.Kind == yaml.ScalarNode {
		return true
	}
	d.fail(n, path, "expected %s, got %s", want, describe(n))
	return false
}

func (d *decoder) duration(n *yaml.Node, v reflect.Value, path string) {
	if !d.isScalar(n, path, "a duration such as 5s") {
		return
	}
	s := n.Value
	if f, err := strconv.ParseFloat(s, 64); err == nil && f != 0 && strings.ContainsAny(s[:1], "0123456789+-.") {
		// A bare number is ambiguous (seconds? milliseconds?); Go's syntax
		// makes the unit part of the value.
		d.fail(n, path, "invalid duration %s: durations need a unit, e.g. %ss or %sms", clip(s), clip(s), clip(s))
		return
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.fail(n, path, "invalid duration %q: use Go syntax such as 250ms, 5s or 1m30s", clip(s))
		return
	}
	v.SetInt(int64(dur))
}

func (d *decoder) sequence(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.SequenceNode {
		if n.Kind == yaml.ScalarNode {
			d.fail(n, path, "expected a list, got %s (write [%s] for a single item)", describe(n), clip(n.Value))
		} else {
			d.fail(n, path, "expected a list, got %s", describe(n))
		}
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.decode(item, s.Index(i), path+"["+strconv.Itoa(i)+"]")
	}
	v.Set(s)
}

func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping, got %s", describe(n))
		return
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	for _, e := range d.entries(n, path) {
		p := joinPath(path, e.name)
		d.record(p, e.key)
		ev := reflect.New(v.Type().Elem()).Elem()
		d.decode(e.val, ev, p)
		m.SetMapIndex(reflect.ValueOf(e.name).Convert(v.Type().Key()), ev)
	}
	v.Set(m)
}

func (d *decoder) structure(n *yaml.Node, v reflect.Value, path string) {
	fields := d.fieldsOf(v.Type())
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "expected a mapping with fields %s, got %s", strings.Join(fields.names, ", "), describe(n))
		return
	}
	for _, e := range d.entries(n, path) {
		p := joinPath(path, e.name)
		idx, ok := fields.index[e.name]
		if !ok {
			d.report(e.key, p, "unknown field %q%s (valid: %s)", clip(e.name), suggest(e.name, fields.names), strings.Join(fields.names, ", "))
			continue
		}
		// Keys, not values, are where a path is written: for a block
		// value the key's line is the one to point at.
		d.record(p, e.key)
		d.decode(e.val, v.FieldByIndex(idx), p)
	}
}

type entry struct {
	key, val *yaml.Node
	name     string
}

// entries lists a mapping's key/value pairs with merge keys (<<) resolved:
// keys written in the mapping win over merged ones, and among merged
// mappings the first wins, as the YAML merge spec says. Repeated written
// keys are errors: the YAML spec forbids them and, silently, the last one
// would win without anyone noticing the first.
func (d *decoder) entries(n *yaml.Node, path string) []entry {
	var out, merged []entry
	seen := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		// Keys are charged too: merges can revisit one large mapping many
		// times, and that work must count against the budget.
		if !d.spend(k, path) {
			return out
		}
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			merged = append(merged, d.merge(val, path)...)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			d.report(k, path, "mapping keys must be plain names, got %s", describe(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.fail(n.Content[i], joinPath(path, k.Value), "duplicate key %q (first at line %d)", clip(k.Value), first.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, entry{key: k, val: val, name: k.Value})
	}
	for _, e := range merged {
		if _, dup := seen[e.name]; !dup {
			seen[e.name] = e.key
			out = append(out, e)
		}
	}
	return out
}

// merge returns the entries a << value brings: one mapping or a list of
// them, each possibly an alias.
func (d *decoder) merge(n *yaml.Node, path string) []entry {
	if !d.spend(n, path) {
		return nil
	}
	if n.Kind == yaml.SequenceNode {
		var out []entry
		seen := make(map[string]bool)
		for _, item := range n.Content {
			if !d.spend(item, path) {
				return nil
			}
			for _, e := range d.mergeOne(item, path) {
				if !seen[e.name] {
					seen[e.name] = true
					out = append(out, e)
				}
			}
		}
		return out
	}
	return d.mergeOne(n, path)
}

func (d *decoder) mergeOne(n *yaml.Node, path string) []entry {
	var out []entry
	if n.Kind == yaml.AliasNode {
		d.follow(n, path, func(t *yaml.Node) { out = d.mergeOne(t, path) })
		return out
	}
	if n.Kind != yaml.MappingNode {
		// Reported, not failed: the mapping's own keys still decode, and
		// at the top level a failed "" would silence all validation.
		d.report(n, path, "<< merges a mapping or a list of mappings, got %s", describe(n))
		return nil
	}
	return d.entries(n, path)
}

type structFields struct {
	index map[string][]int
	names []string // in declaration order, for hints
}

// fieldsOf maps a struct's yaml keys to field indexes, flattening ",inline"
// fields as yaml.v3 does.
func (d *decoder) fieldsOf(t reflect.Type) *structFields {
	if f, ok := d.structs[t]; ok {
		return f
	}
	f := &structFields{index: make(map[string][]int)}
	var walk func(t reflect.Type, prefix []int)
	walk = func(t reflect.Type, prefix []int) {
		for i := range t.NumField() {
			sf := t.Field(i)
			if !sf.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			idx := append(slices.Clone(prefix), i)
			if slices.Contains(strings.Split(opts, ","), "inline") && sf.Type.Kind() == reflect.Struct {
				walk(sf.Type, idx)
				continue
			}
			if name == "" {
				name = strings.ToLower(sf.Name)
			}
			f.index[name] = idx
			f.names = append(f.names, name)
		}
	}
	walk(t, nil)
	d.structs[t] = f
	return f
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "alias *" + clip(n.Value)
	case yaml.ScalarNode:
		if n.ShortTag() == "!!str" {
			return strconv.Quote(clip(n.Value))
		}
		return clip(n.Value)
	}
	return "nothing"
}

// clip keeps one value from flooding an error message.
func clip(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return strings.ToValidUTF8(s[:max], "") + "…"
}

// suggest proposes the closest valid field name for a likely typo.
func suggest(name string, valid []string) string {
	best, bestDist := "", 3
	for _, v := range valid {
		if d := editDistance(name, v); d < bestDist {
			best, bestDist = v, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

// editDistance is the Levenshtein distance, capped cheaply for long input:
// field names are short, and a long unknown key is no typo of any of them.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
