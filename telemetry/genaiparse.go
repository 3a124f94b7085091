package telemetry

// The OpenAI-compatible usage parser. It reads request and response bodies
// as they pass (a tee: see GenAICall), one byte slice at a time, with O(1)
// memory: a streaming JSON scanner that only remembers the path to the
// current value and captures the few scalars it is asked for, and an SSE
// framer on top of it for streamed responses. Nothing is buffered, so a
// chunk reaches the client exactly when it would without the parser; a
// malformed, encoded or oversized body is skipped and counted, never
// refused.

// jsonKey is an object key the parser cares about; every other key is
// keyOther. Paths are kept as keys, not strings, so a lookup allocates
// nothing.
type jsonKey uint8

const (
	keyOther jsonKey = iota
	keyElem          // the level is an array element
	keyModel
	keyStream
	keyUsage
	keyPromptTokens
	keyCompletionTokens
	keyInputTokens
	keyOutputTokens
	keyChoices
	keyFinishReason
	keyDelta
	keyContent
	keyText
	keyReasoningContent
	keyRefusal
	keyToolCalls
	keyError
)

var knownKeys = map[string]jsonKey{
	"model":             keyModel,
	"stream":            keyStream,
	"usage":             keyUsage,
	"prompt_tokens":     keyPromptTokens,
	"completion_tokens": keyCompletionTokens,
	"input_tokens":      keyInputTokens,
	"output_tokens":     keyOutputTokens,
	"choices":           keyChoices,
	"finish_reason":     keyFinishReason,
	"delta":             keyDelta,
	"content":           keyContent,
	"text":              keyText,
	"reasoning_content": keyReasoningContent,
	"refusal":           keyRefusal,
	"tool_calls":        keyToolCalls,
	"error":             keyError,
}

// Scanner bounds. Paths the parser reads are at most four levels deep
// (choices[i].delta.content); deeper levels are scanned, not remembered.
const (
	maxPathDepth = 6
	// maxJSONDepth is how deep a body may nest at all: the open containers
	// are a bit stack in one uint64. OpenAI bodies nest a handful of levels.
	maxJSONDepth = 64
	maxKeyLen    = 24 // longer keys are none of ours
	// MaxGenAIValueLen bounds a captured string (a model name, a finish
	// reason); a longer one is cut and marked truncated.
	MaxGenAIValueLen = 128
)

// Parse error reasons, the reason label of hopwatch_genai_parse_errors_total.
const (
	parseOK         = ""
	parseMalformed  = "malformed"   // not JSON, or not the JSON expected
	parseTooLarge   = "too_large"   // over the byte cap before the usage was read
	parseTooDeep    = "too_deep"    // nested beyond maxJSONDepth
	parseTruncated  = "truncated"   // the body ended in the middle of a value
	parseEncoded    = "encoded"     // Content-Encoding other than identity
	parseEventLarge = "event_large" // one SSE event over the per-event cap
)

type scanState uint8

const (
	stValue        scanState = iota // a value must come
	stValueOrClose                  // after '[': a value or ']'
	stKeyOrClose                    // after '{': a key or '}'
	stKey                           // after ',' in an object: a key
	stColon                         // after a key
	stAfter                         // after a value: ',' or a closing bracket
	stString                        // inside a string
	stToken                         // inside a number or literal
	stDone                          // the top-level value is complete
	stError
)

// captured is a scalar value the sink asked for.
type captured struct {
	buf   [MaxGenAIValueLen]byte
	n     int
	over  bool // longer than buf
	isStr bool
}

func (c *captured) bytes() []byte { return c.buf[:c.n] }

// jsonScanner is a streaming, allocation-free JSON scanner: feed it bytes
// with write, in any split; it reports the scalars at paths its sink wants
// and the start of containers (sink.open). It accepts exactly the JSON
// grammar of RFC 8259 except that numbers are checked loosely (digits,
// sign, point, exponent) and escapes are not decoded: a key spelled with
// escapes is keyOther, a captured string keeps its escapes.
type jsonScanner struct {
	sink   jsonSink
	state  scanState
	err    string
	depth  int
	arrays uint64 // bit d-1 set: level d is an array
	path   [maxPathDepth]jsonKey

	inKey   bool
	esc     bool
	hex     int // \u hex digits still expected
	keyBuf  [maxKeyLen]byte
	keyN    int
	keyOver bool
	want    bool // capture the current scalar
	val     captured
}

// jsonSink receives what the scanner finds. path is the key (or keyElem)
// of each level from the root down to the value.
type jsonSink interface {
	// wants reports whether the scalar about to start at path is needed.
	wants(path []jsonKey) bool
	// scalar delivers a wanted value, complete.
	scalar(path []jsonKey, v *captured)
	// open reports a container ('{' or '[') starting at path.
	open(path []jsonKey, c byte)
}

func (s *jsonScanner) reset() {
	sink := s.sink
	*s = jsonScanner{sink: sink}
}

func (s *jsonScanner) fail(reason string) {
	s.state, s.err = stError, reason
}

// curPath is the path of a value starting at the current depth.
func (s *jsonScanner) curPath() []jsonKey {
	return s.path[:min(s.depth, maxPathDepth)]
}

func (s *jsonScanner) isArray() bool { return s.depth > 0 && s.arrays&(1<<(s.depth-1)) != 0 }

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// write scans p. After an error it ignores everything.
func (s *jsonScanner) write(p []byte) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch s.state {
		case stError:
			return
		case stString:
			// Fast path: plain string bytes.
			j := i
			for j < len(p) && p[j] != '"' && p[j] != '\\' && p[j] >= 0x20 && !s.esc && s.hex == 0 {
				j++
			}
			if j > i {
				s.take(p[i:j])
				i = j - 1
				continue
			}
			s.stringByte(c)
		case stToken:
			if c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c == '.' || c == '+' || c == '-' || c == 'E' {
				s.take(p[i : i+1])
				continue
			}
			s.endToken()
			i-- // the delimiter belongs to the next state
		case stDone:
			if !isSpace(c) {
				s.fail(parseMalformed)
			}
		case stColon:
			if c == ':' {
				s.state = stValue
			} else if !isSpace(c) {
				s.fail(parseMalformed)
			}
		case stKeyOrClose, stKey:
			switch {
			case isSpace(c):
			case c == '"':
				s.state, s.inKey, s.keyN, s.keyOver = stString, true, 0, false
			case c == '}' && s.state == stKeyOrClose:
				s.close()
			default:
				s.fail(parseMalformed)
			}
		case stAfter:
			switch {
			case isSpace(c):
			case c == ',':
				if s.isArray() {
					s.state = stValue
				} else {
					s.state = stKey
				}
			case c == ']' && s.isArray(), c == '}' && !s.isArray() && s.depth > 0:
				s.close()
			default:
				s.fail(parseMalformed)
			}
		case stValue, stValueOrClose:
			switch {
			case isSpace(c):
			case c == ']' && s.state == stValueOrClose:
				s.close()
			case c == '{' || c == '[':
				if s.depth >= maxJSONDepth {
					s.fail(parseTooDeep)
					return
				}
				if s.sink != nil {
					s.sink.open(s.curPath(), c)
				}
				s.depth++
				if c == '[' {
					s.arrays |= 1 << (s.depth - 1)
					if s.depth <= maxPathDepth {
						s.path[s.depth-1] = keyElem
					}
					s.state = stValueOrClose
				} else {
					s.arrays &^= 1 << (s.depth - 1)
					if s.depth <= maxPathDepth {
						s.path[s.depth-1] = keyOther
					}
					s.state = stKeyOrClose
				}
			case c == '"':
				s.startScalar(true)
				s.state = stString
			case c == '-' || c >= '0' && c <= '9' || c == 't' || c == 'f' || c == 'n':
				s.startScalar(false)
				s.state = stToken
				s.take(p[i : i+1])
			default:
				s.fail(parseMalformed)
			}
		}
	}
}

func (s *jsonScanner) startScalar(isStr bool) {
	s.inKey = false
	s.want = s.sink != nil && s.sink.wants(s.curPath())
	s.val.n, s.val.over, s.val.isStr = 0, false, isStr
}

// take appends to the key or captured value being read.
func (s *jsonScanner) take(b []byte) {
	if s.inKey {
		if s.keyN+len(b) > maxKeyLen {
			s.keyOver = true
			return
		}
		s.keyN += copy(s.keyBuf[s.keyN:], b)
		return
	}
	if !s.want && s.state != stToken {
		return // tokens are kept to be checked even when not wanted
	}
	n := copy(s.val.buf[s.val.n:], b)
	s.val.n += n
	if n < len(b) {
		s.val.over = true
	}
}

func (s *jsonScanner) stringByte(c byte) {
	switch {
	case s.hex > 0:
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			s.fail(parseMalformed)
			return
		}
		s.hex--
		s.take([]byte{c})
	case s.esc:
		s.esc = false
		switch c {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			s.hex = 4
		default:
			s.fail(parseMalformed)
			return
		}
		s.take([]byte{c})
	case c == '\\':
		s.esc = true
		if s.inKey {
			s.keyOver = true // an escaped key is none of ours
		}
		s.take([]byte{c})
	case c == '"':
		s.endString()
	case c < 0x20:
		s.fail(parseMalformed) // RFC 8259 §7: control characters must be escaped
	default:
		s.take([]byte{c})
	}
}

func (s *jsonScanner) endString() {
	if s.inKey {
		s.inKey = false
		if s.depth <= maxPathDepth {
			k := keyOther
			if !s.keyOver {
				k = knownKeys[string(s.keyBuf[:s.keyN])] // no allocation: map lookup by converted bytes
			}
			s.path[s.depth-1] = k
		}
		s.state = stColon
		return
	}
	s.endScalar()
}

func (s *jsonScanner) endToken() {
	v := s.val.bytes()
	ok := true
	switch v[0] {
	case 't':
		ok = !s.val.over && string(v) == "true"
	case 'f':
		ok = !s.val.over && string(v) == "false"
	case 'n':
		ok = !s.val.over && string(v) == "null"
	default:
		// A number longer than the buffer is scanned, not checked.
		ok = s.val.over || validNumber(v)
	}
	if !ok {
		s.fail(parseMalformed)
		return
	}
	s.endScalar()
}

// end marks the end of input: a number at the very end is complete only
// now. It reports whether exactly one value was read.
func (s *jsonScanner) end() bool {
	if s.state == stToken {
		s.endToken()
	}
	return s.state == stDone
}

func (s *jsonScanner) endScalar() {
	if s.want && s.sink != nil {
		s.sink.scalar(s.curPath(), &s.val)
	}
	s.want = false
	s.afterValue()
}

func (s *jsonScanner) afterValue() {
	if s.depth == 0 {
		s.state = stDone
	} else {
		s.state = stAfter
	}
}

func (s *jsonScanner) close() {
	s.depth--
	s.afterValue()
}

// validNumber checks a captured number against RFC 8259 §6.
func validNumber(v []byte) bool {
	i := 0
	if i < len(v) && v[i] == '-' {
		i++
	}
	if i >= len(v) {
		return false
	}
	if v[i] == '0' {
		i++
	} else if v[i] >= '1' && v[i] <= '9' {
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i++
		}
	} else {
		return false
	}
	if i < len(v) && v[i] == '.' {
		i++
		d := i
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	if i < len(v) && (v[i] == 'e' || v[i] == 'E') {
		i++
		if i < len(v) && (v[i] == '+' || v[i] == '-') {
			i++
		}
		d := i
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i++
		}
		if i == d {
			return false
		}
	}
	return i == len(v)
}

// parseCount reads a non-negative integer token count; anything else
// (a fraction, a negative, an overflow, a string) is not a count.
func parseCount(v *captured) (int64, bool) {
	if v.isStr || v.over || v.n == 0 || v.n > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v.bytes() {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
