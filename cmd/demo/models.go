package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// modelRow is one model's usage since start, as hopwatch's genai metrics
// count it on the llm route (inference → model server).
type modelRow struct {
	Model     string
	Requests  float64
	Input     float64 // tokens
	Output    float64
	Truncated float64 // finish_reason length
	Cost      float64
	TTFT      time.Duration // mean time to first token
}

// modelUsage reads the hopwatch_genai_* series from the registry hopwatch
// exports at /metrics.
func modelUsage(g prometheus.Gatherer) ([]modelRow, error) {
	mfs, err := g.Gather()
	if err != nil {
		return nil, err
	}
	rows := map[string]*modelRow{}
	row := func(labels map[string]string) *modelRow {
		m := labels["model"]
		if rows[m] == nil {
			rows[m] = &modelRow{Model: m}
		}
		return rows[m]
	}
	var ttftSum = map[string]float64{}
	var ttftCount = map[string]uint64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch mf.GetName() {
			case "hopwatch_genai_requests_total":
				r := row(labels)
				r.Requests += m.GetCounter().GetValue()
				if labels["finish_reason"] == "length" {
					r.Truncated += m.GetCounter().GetValue()
				}
			case "hopwatch_genai_tokens_total":
				r := row(labels)
				if labels["type"] == "input" {
					r.Input += m.GetCounter().GetValue()
				} else {
					r.Output += m.GetCounter().GetValue()
				}
			case "hopwatch_genai_cost_total":
				row(labels).Cost += m.GetCounter().GetValue()
			case "hopwatch_genai_time_to_first_token_seconds":
				ttftSum[labels["model"]] += m.GetHistogram().GetSampleSum()
				ttftCount[labels["model"]] += m.GetHistogram().GetSampleCount()
			}
		}
	}
	out := make([]modelRow, 0, len(rows))
	for name, r := range rows {
		if n := ttftCount[name]; n > 0 {
			r.TTFT = time.Duration(ttftSum[name] / float64(n) * float64(time.Second))
		}
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b modelRow) int { return strings.Compare(a.Model, b.Model) })
	return out, nil
}

// writeModels prints one line per model.
func writeModels(w io.Writer, rows []modelRow) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "models: no model calls yet")
		return
	}
	fmt.Fprintf(w, "%-10s %8s %10s %10s %9s %9s %10s\n", "models", "requests", "tokens in", "tokens out", "truncated", "ttft avg", "cost")
	for _, r := range rows {
		fmt.Fprintf(w, "  %-8s %8.0f %10.0f %10.0f %9.0f %9s %10.4f\n",
			r.Model, r.Requests, r.Input, r.Output, r.Truncated, formatDuration(r.TTFT), r.Cost)
	}
}
