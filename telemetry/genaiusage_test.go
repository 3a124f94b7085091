package telemetry

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestGenAIUsage(t *testing.T) {
	tel, err := New(Options{Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	m := tel.x.genai
	m.requests.WithLabelValues("llm", "faq-small", "stop").Add(10)
	m.requests.WithLabelValues("llm", "faq-small", "length").Add(2)
	m.tokens.WithLabelValues("llm", "faq-small", "input").Add(300)
	m.tokens.WithLabelValues("llm", "faq-small", "output").Add(900)
	m.cost.WithLabelValues("llm", "faq-small").Add(0.25)
	m.ttft.WithLabelValues("llm", "faq-small").Observe(0.1)
	m.ttft.WithLabelValues("llm", "faq-small").Observe(0.3)
	m.requests.WithLabelValues("embed", "other", "none").Add(1)
	got, err := tel.GenAIUsage()
	if err != nil {
		t.Fatal(err)
	}
	want := []ModelUsage{
		{Route: "embed", Model: "other", Requests: 1},
		{Route: "llm", Model: "faq-small", Requests: 12, InputTokens: 300, OutputTokens: 900, Truncated: 2, Cost: 0.25, TTFT: 0.2},
	}
	if !slices.EqualFunc(got, want, func(a, b ModelUsage) bool {
		return a.Route == b.Route && a.Model == b.Model && a.Requests == b.Requests && a.InputTokens == b.InputTokens &&
			a.OutputTokens == b.OutputTokens && a.Truncated == b.Truncated && a.Cost == b.Cost &&
			a.TTFT > b.TTFT-1e-9 && a.TTFT < b.TTFT+1e-9
	}) {
		t.Errorf("GenAIUsage = %+v\nwant %+v", got, want)
	}
}
