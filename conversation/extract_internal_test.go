package conversation

import "testing"

// BenchmarkExtractJSON is the body scan alone: the session id and the
// message of a typical chat request.
func BenchmarkExtractJSON(b *testing.B) {
	body := []byte(`{"model":"bot-1","session_id":"6b1f0c1e-8d7a-4a53-9a57-3c2f1d0e9b8a","stream":true,` +
		`"message":"hello, could you tell me where my order 12345 is right now? it was due yesterday","metadata":{"channel":"web","locale":"en-GB"}}`)
	paths := []jsonPath{{"session_id"}, {"message"}}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		extractJSON(body, paths)
	}
}
