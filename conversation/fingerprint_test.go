package conversation_test

import (
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/conversation"
)

func BenchmarkFingerprint(b *testing.B) {
	cases := []struct{ name, text string }{
		{"short", "where is my order?"},
		{"chat message", "hello, could you tell me where my order 12345 is right now? it was due yesterday and nobody answers"},
		{"long, cut at 2KiB", strings.Repeat("the quick brown fox jumps over the lazy dog ", 200)},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			f := conversation.NewFingerprinter([]string{"useless", "talk to a human", "not helpful"})
			b.SetBytes(int64(min(len(tc.text), conversation.MaxFingerprintBytes)))
			b.ReportAllocs()
			for b.Loop() {
				f.Fingerprint(tc.text)
			}
		})
	}
}

// TestFingerprintAllocs: fingerprinting allocates nothing (it runs on the
// request goroutine of every turn).
func TestFingerprintAllocs(t *testing.T) {
	f := conversation.NewFingerprinter([]string{"useless", "talk to a human"})
	text := "hello, could you tell me where my order 12345 is right now? Это бесполезно"
	if n := testing.AllocsPerRun(100, func() { f.Fingerprint(text) }); n != 0 {
		t.Errorf("%v allocations per fingerprint, want 0", n)
	}
}

// TestSimilarity pins the similarity scale the repeat threshold refers to.
func TestSimilarity(t *testing.T) {
	f := conversation.NewFingerprinter(nil)
	sim := func(a, b string) float64 { return conversation.Similarity(f.Fingerprint(a), f.Fingerprint(b)) }
	cases := []struct {
		name     string
		a, b     string
		min, max float64
	}{
		{"identical", "where is my order", "where is my order", 1, 1},
		{"case and punctuation do not count", "Where is my order?!", "where, is my ORDER", 1, 1},
		{"one more word", "where is my order", "where is my order please", 0.8, 0.99},
		{"unrelated", "where is my order", "what are your opening hours on sunday", 0, 0.75},
		{"word order matters a little", "is my order where", "where is my order", 0.5, 0.95},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if s := sim(tc.a, tc.b); s < tc.min || s > tc.max {
				t.Errorf("similarity %.3f, want in [%v, %v]", s, tc.min, tc.max)
			}
		})
	}
	// Unrelated messages sit near 0.5 on average, far from the 0.8
	// default: check it over many pairs, so the threshold has margin.
	var sum float64
	var over int
	const n = 200
	for i := range n {
		s := sim(strings.Repeat("alpha beta ", i%5+1)+string(rune('a'+i%26))+" gamma question number "+strings.Repeat("x", i),
			"completely different words about delivery times and refunds "+strings.Repeat("y", i))
		sum += s
		if s >= conversation.DefaultRepeatSimilarity {
			over++
		}
	}
	if mean := sum / n; mean > 0.65 || over > 0 {
		t.Errorf("unrelated pairs: mean similarity %.3f, %d of %d at or over the default threshold", mean, over, n)
	}
}
