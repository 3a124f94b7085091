package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/hopwatch/hopwatch/telemetry"
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

// modelUsage sums what hopwatch counted per model over its genai routes
// (telemetry.GenAIUsage reads the hopwatch_genai_* series); the mean time
// to first token is weighted by requests.
func modelUsage(tel *telemetry.Telemetry) ([]modelRow, error) {
	usage, err := tel.GenAIUsage()
	if err != nil {
		return nil, err
	}
	rows := map[string]*modelRow{}
	ttft := map[string]float64{} // seconds × requests
	for _, u := range usage {
		r := rows[u.Model]
		if r == nil {
			r = &modelRow{Model: u.Model}
			rows[u.Model] = r
		}
		r.Requests += u.Requests
		r.Input += u.InputTokens
		r.Output += u.OutputTokens
		r.Truncated += u.Truncated
		r.Cost += u.Cost
		ttft[u.Model] += u.TTFT * u.Requests
	}
	out := make([]modelRow, 0, len(rows))
	for name, r := range rows {
		if r.Requests > 0 {
			r.TTFT = time.Duration(ttft[name] / r.Requests * float64(time.Second))
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
