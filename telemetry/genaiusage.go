package telemetry

import (
	"cmp"
	"slices"

	dto "github.com/prometheus/client_model/go"
)

// ModelUsage is what one route spent on one model since start, for the
// dashboard's model-usage panel (/api/genai). It is read from the
// hopwatch_genai_* series themselves, so the panel and Prometheus never
// disagree.
type ModelUsage struct {
	Route        string  `json:"route"`
	Model        string  `json:"model"`
	Requests     float64 `json:"requests"`
	InputTokens  float64 `json:"input_tokens"`
	OutputTokens float64 `json:"output_tokens"`
	// Truncated counts answers that stopped at the length limit.
	Truncated float64 `json:"truncated"`
	Cost      float64 `json:"cost"`
	// TTFT is the mean time to the first token, in seconds (0: none seen).
	TTFT float64 `json:"ttft_mean_seconds"`
}

// GenAIUsage lists the usage of every route and model seen, by route then
// model. It gathers the registry: meant for the admin API, not hot paths.
func (t *Telemetry) GenAIUsage() ([]ModelUsage, error) {
	if t == nil {
		return nil, nil
	}
	mfs, err := t.reg.Gather()
	if err != nil {
		return nil, err
	}
	type key struct{ route, model string }
	by := map[key]*ModelUsage{}
	get := func(m *dto.Metric) *ModelUsage {
		var k key
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "route":
				k.route = l.GetValue()
			case "model":
				k.model = l.GetValue()
			}
		}
		u := by[k]
		if u == nil {
			u = &ModelUsage{Route: k.route, Model: k.model}
			by[k] = u
		}
		return u
	}
	label := func(m *dto.Metric, name string) string {
		for _, l := range m.GetLabel() {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
		return ""
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "hopwatch_genai_requests_total":
				u := get(m)
				u.Requests += m.GetCounter().GetValue()
				if label(m, "finish_reason") == "length" {
					u.Truncated += m.GetCounter().GetValue()
				}
			case "hopwatch_genai_tokens_total":
				u := get(m)
				switch label(m, "type") {
				case "input":
					u.InputTokens += m.GetCounter().GetValue()
				case "output":
					u.OutputTokens += m.GetCounter().GetValue()
				}
			case "hopwatch_genai_cost_total":
				get(m).Cost += m.GetCounter().GetValue()
			case "hopwatch_genai_time_to_first_token_seconds":
				if h := m.GetHistogram(); h.GetSampleCount() > 0 {
					get(m).TTFT = h.GetSampleSum() / float64(h.GetSampleCount())
				}
			}
		}
	}
	out := make([]ModelUsage, 0, len(by))
	for _, u := range by {
		out = append(out, *u)
	}
	slices.SortFunc(out, func(a, b ModelUsage) int { return cmp.Or(cmp.Compare(a.Route, b.Route), cmp.Compare(a.Model, b.Model)) })
	return out, nil
}
