package telemetry

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzJSONScanner: the scanner never panics, gives the same answer however
// the input is split, accepts every valid JSON document (up to its depth
// bound) and reads the same model and usage as encoding/json.
func FuzzJSONScanner(f *testing.F) {
	for _, s := range []string{chatReq, chatStreamReq, chatResp, embedResp, errResp, `{}`, `[]`, `1`, `"x"`, `{"model":"a\"b"}`,
		`{"usage":{"prompt_tokens":12345678901234567890}}`, `{"model":1}`, `nul`, `{"a":[1,2,{"b":null}]}`, "{\"model\":\"\xff\"}"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		var whole, parts oaiFields
		s1 := jsonScanner{sink: &whole}
		s1.write(data)
		ok1 := s1.end()
		s2 := jsonScanner{sink: &parts}
		step := int(split%16) + 1
		for i := 0; i < len(data); i += step {
			s2.write(data[i:min(i+step, len(data))])
		}
		ok2 := s2.end()
		if ok1 != ok2 || whole != parts || s1.err != s2.err {
			t.Fatalf("split changes the result: %v %+v / %v %+v", ok1, whole, ok2, parts)
		}
		if !json.Valid(data) || s1.err == parseTooDeep {
			return
		}
		if !ok1 {
			t.Fatalf("valid JSON rejected (%s): %q", s1.err, data)
		}
		if bytes.IndexByte(data, '\\') >= 0 || !utf8.Valid(data) {
			return // escapes are kept raw, by design; invalid UTF-8 is replaced later (modelName)
		}
		var m map[string]any
		if json.Unmarshal(data, &m) != nil {
			return
		}
		if v, ok := m["model"].(string); ok && len(v) <= MaxGenAIValueLen {
			if got := string(whole.model[:whole.modelN]); got != v {
				t.Fatalf("model = %q, encoding/json says %q", got, v)
			}
		}
		if u, ok := m["usage"].(map[string]any); ok {
			if v, ok := u["prompt_tokens"].(float64); ok && v >= 0 && v < 1e15 && v == float64(int64(v)) && !bytes.Contains(data, []byte("e")) && !bytes.Contains(data, []byte(".")) {
				if !whole.hasIn || whole.in != int64(v) {
					t.Fatalf("prompt_tokens = %d (%v), encoding/json says %v", whole.in, whole.hasIn, v)
				}
			}
		}
	})
}

// FuzzSSE: any stream, any split: no panic, the same usage, and bounded
// work (the call keeps no bytes).
func FuzzSSE(f *testing.F) {
	for _, s := range []string{streamWithUsage, streamNoUsage, "data: [DONE]\n\n", "data:\ndata:\n\n", ": c\r\n\r\n", "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\r\rdata: x\n\n"} {
		f.Add([]byte(s), uint8(5))
	}
	tel := newTestTelemetry(f, Config{})
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		run := func(step int) *GenAIUsage {
			now := time.Unix(1, 0)
			tel.now = func() time.Time { return now }
			rt := tel.Route(RouteInfo{Name: "llm", GenAI: GenAIAPIOpenAI}, nil)
			c := newGenAICall(rt.genai, "/v1/chat/completions", now)
			c.header(200, "text/event-stream", "")
			for i := 0; i < len(data); i += step {
				c.response(data[i:min(i+step, len(data))])
			}
			return c.finish(now, false)
		}
		a, b := run(len(data)+1), run(int(split%32)+1)
		if a.InputTokens != b.InputTokens || a.OutputTokens != b.OutputTokens || a.FinishReason != b.FinishReason ||
			a.ResponseModel != b.ResponseModel || a.ParseError != b.ParseError {
			t.Fatalf("split changes the result:\n%+v\n%+v", a, b)
		}
	})
}
