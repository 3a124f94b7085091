package telemetry

import "bytes"

// OpenAI-compatible bodies (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM all
// speak this shape):
//
//	request   {"model": "...", "stream": true, "messages": [...]}
//	response  {"model": "...", "choices": [{"finish_reason": "stop", ...}],
//	           "usage": {"prompt_tokens": 9, "completion_tokens": 12}}
//	stream    data: {"model": "...", "choices": [{"delta": {"content": "Hi"}, "finish_reason": null}]}
//	          ...
//	          data: {"choices": [], "usage": {...}}   (with stream_options.include_usage)
//	          data: [DONE]
//
// input_tokens/output_tokens (the Responses API spelling) are read as
// well. Errors come as {"error": {...}}, also inside a stream.

// maxFinishReasons bounds the finish reasons kept for one response (one
// per choice; n > 1 is rare).
const maxFinishReasons = 4

// Finish reasons, the finish_reason label: a fixed set.
const (
	FinishStop          = "stop"
	FinishLength        = "length"
	FinishContentFilter = "content_filter"
	FinishToolCalls     = "tool_calls"
	FinishError         = "error" // an error response or error event
	FinishOther         = "other" // a reason outside this set
	FinishNone          = "none"  // none was given (embeddings, a cut stream)
)

// finishReason maps what servers write to the fixed set. Ollama and
// llama.cpp use OpenAI's words; max_tokens/end_turn/tool_use are the
// Anthropic-compatible spellings some gateways pass through.
func finishReason(v []byte) string {
	switch string(v) {
	case "stop", "end_turn", "stop_sequence", "eos":
		return FinishStop
	case "length", "max_tokens":
		return FinishLength
	case "content_filter":
		return FinishContentFilter
	case "tool_calls", "function_call", "tool_use":
		return FinishToolCalls
	case "":
		return FinishNone
	}
	return FinishOther
}

// oaiFields is what one JSON value (a response body, one stream event)
// said. It is the scanner's sink.
type oaiFields struct {
	request bool // read "stream" (request bodies)

	model      [MaxGenAIValueLen]byte
	modelN     int
	stream     bool
	hasUsage   bool
	in, out    int64
	hasIn      bool
	hasOut     bool
	finish     [maxFinishReasons]string
	finishN    int
	content    bool // a delta or text with content: one output chunk
	err        bool
	modelTrunc bool
}

func (f *oaiFields) clear() {
	req := f.request
	*f = oaiFields{request: req}
}

func (f *oaiFields) wants(p []jsonKey) bool {
	switch len(p) {
	case 1:
		return p[0] == keyModel || p[0] == keyError || f.request && p[0] == keyStream
	case 2:
		return p[0] == keyUsage && (p[1] == keyPromptTokens || p[1] == keyCompletionTokens ||
			p[1] == keyInputTokens || p[1] == keyOutputTokens)
	case 3:
		return p[0] == keyChoices && p[1] == keyElem && (p[2] == keyFinishReason || p[2] == keyText)
	case 4:
		return p[0] == keyChoices && p[1] == keyElem && p[2] == keyDelta &&
			(p[3] == keyContent || p[3] == keyReasoningContent || p[3] == keyRefusal)
	}
	return false
}

func (f *oaiFields) open(p []jsonKey, c byte) {
	switch {
	case len(p) == 1 && p[0] == keyError:
		f.err = true
	case len(p) == 1 && p[0] == keyUsage && c == '{':
		f.hasUsage = true
	case len(p) == 4 && p[0] == keyChoices && p[1] == keyElem && p[2] == keyDelta && p[3] == keyToolCalls:
		f.content = true
	}
}

func (f *oaiFields) scalar(p []jsonKey, v *captured) {
	null := !v.isStr && string(v.bytes()) == "null"
	switch len(p) {
	case 1:
		switch p[0] {
		case keyModel:
			if v.isStr {
				f.modelN = copy(f.model[:], v.bytes())
				f.modelTrunc = v.over
			}
		case keyError:
			f.err = f.err || !null
		case keyStream:
			f.stream = !v.isStr && string(v.bytes()) == "true"
		}
	case 2:
		n, ok := parseCount(v)
		if !ok {
			return
		}
		switch p[1] {
		case keyPromptTokens, keyInputTokens:
			f.in, f.hasIn = n, true
		case keyCompletionTokens, keyOutputTokens:
			f.out, f.hasOut = n, true
		}
	case 3:
		if p[2] == keyText {
			f.content = f.content || v.isStr && v.n > 0
			return
		}
		if v.isStr && f.finishN < maxFinishReasons {
			f.finish[f.finishN] = finishReason(v.bytes())
			f.finishN++
		}
	case 4:
		f.content = f.content || v.isStr && v.n > 0
	}
}

// sseFramer splits a text/event-stream (WHATWG HTML §9.2.6) into events
// and feeds each event's data to a JSON scanner as it arrives, without
// keeping lines: a "data:" line's payload goes to the scanner byte by
// byte, the lines of one event joined by '\n' (which JSON reads as white
// space). A blank line ends the event.
type sseFramer struct {
	lineStart bool
	field     [8]byte // the field name of the current line, while read
	fieldN    int
	inField   bool // reading the field name
	inData    bool // in a data line's value
	skipSpace bool // the one optional space after "data:"
	skip      bool // in a line of another field, or a comment
	cr        bool // the previous byte was '\r' (a CRLF is one line end)

	dataN   int     // payload bytes of the current event
	head    [6]byte // the first payload bytes, to recognize [DONE]
	lines   int     // data lines in the current event
	tooBig  bool
	maxData int
}

// maxEventBytes is the per-event cap of the SSE parser: an event larger
// than this is skipped (and counted), not scanned. Real token chunks are
// well under 1 KiB; a tool call's arguments may be a few KiB.
const maxEventBytes = 256 << 10

var doneMarker = []byte("[DONE]")

func (f *sseFramer) reset() { *f = sseFramer{lineStart: true, maxData: maxEventBytes} }

// sseSink receives the framer's events.
type sseSink interface {
	data(p []byte)           // payload bytes of the current event
	newline()                // between two data lines of one event
	event(done, tooBig bool) // the event ended (blank line)
}

func (f *sseFramer) write(p []byte, sink sseSink) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if f.cr {
			f.cr = false
			if c == '\n' {
				continue // the LF of a CRLF
			}
		}
		if c == '\r' || c == '\n' {
			f.cr = c == '\r'
			f.endLine(sink)
			continue
		}
		if f.lineStart {
			f.lineStart, f.inField, f.fieldN = false, true, 0
		}
		switch {
		case f.inField:
			if c == ':' {
				f.inField = false
				if string(f.field[:f.fieldN]) == "data" {
					f.inData, f.skipSpace = true, true
					if f.lines > 0 {
						f.feed([]byte{'\n'}, sink)
					}
					f.lines++
				} else {
					f.skip = true
				}
				continue
			}
			if f.fieldN < len(f.field) {
				f.field[f.fieldN] = c
				f.fieldN++
			} else {
				f.inField, f.skip = false, true
			}
		case f.inData:
			if f.skipSpace {
				f.skipSpace = false
				if c == ' ' {
					continue
				}
			}
			// The rest of the line, at once.
			j := i
			for j < len(p) && p[j] != '\n' && p[j] != '\r' {
				j++
			}
			f.feed(p[i:j], sink)
			i = j - 1
		}
	}
}

func (f *sseFramer) feed(b []byte, sink sseSink) {
	if f.dataN < len(f.head) {
		copy(f.head[f.dataN:], b)
	}
	f.dataN += len(b)
	if f.dataN > f.maxData {
		f.tooBig = true
		return
	}
	if !f.tooBig {
		sink.data(b)
	}
}

func (f *sseFramer) endLine(sink sseSink) {
	blank := f.lineStart
	if f.inField && f.fieldN == 4 && string(f.field[:4]) == "data" {
		// "data" alone on a line is a data line with an empty value.
		if f.lines > 0 {
			f.feed([]byte{'\n'}, sink)
		}
		f.lines++
	}
	f.lineStart, f.inField, f.inData, f.skip = true, false, false, false
	if !blank {
		return
	}
	if f.lines > 0 {
		done := f.dataN == len(doneMarker) && bytes.Equal(f.head[:], doneMarker)
		sink.event(done, f.tooBig)
	}
	f.dataN, f.lines, f.tooBig = 0, 0, false
}

// flush ends an event left open by a stream that stopped without its
// final blank line.
func (f *sseFramer) flush(sink sseSink) {
	if !f.lineStart {
		f.endLine(sink)
	}
	f.endLine(sink)
}
