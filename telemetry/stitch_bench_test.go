package telemetry

import (
	"testing"
	"time"
)

// BenchmarkSummarizeStitchWorst is the costliest trace to summarize: the
// span cap's worth of hops (a client keeping one trace for a long
// session), every inner hop's parent unseen, each one looked up among
// all the attempts.
func BenchmarkSummarizeStitchWorst(b *testing.B) {
	var spans []Span
	for i := 0; len(spans)+8 <= MaxSpansPerTrace; i++ {
		spans = append(spans, (sdkTurn{base: uint64(i) * 1000, off: time.Duration(i) * ms(10), gwSDK: true, dmSDK: true}).spans(1)...)
	}
	b.ReportAllocs()
	for b.Loop() {
		summarize(tid(1), spans, 0)
	}
}
