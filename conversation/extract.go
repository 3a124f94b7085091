package conversation

import (
	"encoding/json"
	"strings"
)

// Reading the session id and the message from an entry request's body:
// the first MaxBodyBytes of a JSON body, scanned once, without building a
// document. Fields are named by dotted paths of object keys
// ("metadata.session_id"); arrays are not entered. A body cut at the limit
// yields what was complete before the cut. Nothing found is not an error.

// MaxBodyBytes is how much of an entry request's body is read for
// extraction; the rest streams on unseen.
const MaxBodyBytes = 64 << 10

// maxJSONDepth bounds nesting the scanner follows or skips; deeper
// documents are given up on (no value found), never recursed into.
const maxJSONDepth = 64

// maxJSONPaths bounds the paths looked for at once (json: sources and
// text_from).
const maxJSONPaths = 16

// jsonPath is a parsed "json:a.b.c".
type jsonPath []string

func parseJSONPath(p string) (jsonPath, bool) {
	if p == "" {
		return nil, false
	}
	parts := strings.Split(p, ".")
	for _, s := range parts {
		if s == "" {
			return nil, false
		}
	}
	return parts, true
}

// extractJSON returns the values at paths in doc: strings unescaped,
// numbers as written; "" for a path not found or not a string or number.
func extractJSON(doc []byte, paths []jsonPath) []string {
	out := make([]string, len(paths))
	s := scanner{b: doc}
	s.ws()
	if !s.peek('{') {
		return out
	}
	var buf [maxJSONPaths]bool
	active := buf[:len(paths)]
	for i := range active {
		active[i] = true
	}
	s.object(paths, active, 0, out)
	return out
}

type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) peek(c byte) bool { return s.i < len(s.b) && s.b[s.i] == c }

// object scans an object at s.i ('{'), filling out for the active paths
// whose keys up to depth matched. It reports false when the document ends
// or breaks.
func (s *scanner) object(paths []jsonPath, active []bool, depth int, out []string) bool {
	if depth >= maxJSONDepth {
		return false
	}
	s.i++ // '{'
	s.ws()
	if s.peek('}') {
		s.i++
		return true
	}
	var buf [maxJSONPaths]bool
	next := buf[:len(paths)]
	for {
		s.ws()
		key, esc, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if !s.peek(':') {
			return false
		}
		s.i++
		s.ws()
		var k string // the unescaped key, only when it has escapes (rare)
		if esc {
			k = unescape(key)
		}
		descend := false
		for j, p := range paths {
			next[j] = active[j] && depth < len(p) && (!esc && p[depth] == string(key) || esc && p[depth] == k)
			if !next[j] {
				continue
			}
			if depth == len(p)-1 {
				if out[j] == "" {
					out[j] = s.scalar()
				}
				next[j] = false
			} else {
				descend = true
			}
		}
		if descend && s.peek('{') {
			if !s.object(paths, next, depth+1, out) {
				return false
			}
		} else if !s.skip(depth + 1) {
			return false
		}
		s.ws()
		if s.peek(',') {
			s.i++
			continue
		}
		if s.peek('}') {
			s.i++
			return true
		}
		return false
	}
}

// str reads a string at s.i, returning its raw content and whether it
// has escapes. The position is left after the closing quote.
func (s *scanner) str() ([]byte, bool, bool) {
	if !s.peek('"') {
		return nil, false, false
	}
	start := s.i + 1
	esc := false
	for j := start; j < len(s.b); j++ {
		switch s.b[j] {
		case '\\':
			esc = true
			j++
		case '"':
			s.i = j + 1
			return s.b[start:j], esc, true
		}
	}
	s.i = len(s.b)
	return nil, false, false
}

// scalar returns the string or number at s.i without moving past it
// (skip does that), "" for anything else.
func (s *scanner) scalar() string {
	if s.peek('"') {
		save := s.i
		raw, esc, ok := s.str()
		s.i = save
		if !ok {
			return ""
		}
		if esc {
			return unescape(raw)
		}
		return string(raw)
	}
	j := s.i
	for j < len(s.b) && (s.b[j] == '-' || s.b[j] == '+' || s.b[j] == '.' || s.b[j] == 'e' || s.b[j] == 'E' || s.b[j] >= '0' && s.b[j] <= '9') {
		j++
	}
	if j == s.i || j == len(s.b) { // not a number, or cut: the digits may go on
		return ""
	}
	return string(s.b[s.i:j])
}

// skip moves past the value at s.i.
func (s *scanner) skip(depth int) bool {
	if s.i >= len(s.b) {
		return false
	}
	switch s.b[s.i] {
	case '"':
		_, _, ok := s.str()
		return ok
	case '{', '[':
		if depth >= maxJSONDepth {
			return false
		}
		open := 0
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case '"':
				if _, _, ok := s.str(); !ok {
					return false
				}
				continue
			case '{', '[':
				open++
				if open > maxJSONDepth {
					return false
				}
			case '}', ']':
				open--
				if open == 0 {
					s.i++
					return true
				}
			}
			s.i++
		}
		return false
	}
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return true
		}
		s.i++
	}
	return false
}

// unescape decodes a JSON string's content; invalid escapes give "".
func unescape(raw []byte) string {
	q := make([]byte, 0, len(raw)+2)
	q = append(q, '"')
	q = append(q, raw...)
	q = append(q, '"')
	var v string
	if json.Unmarshal(q, &v) != nil {
		return ""
	}
	return v
}
