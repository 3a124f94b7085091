package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hopwatch/hopwatch/demo"
)

// view prints the demo to the terminal: a banner, then every few seconds a
// block with the turns the users saw, the calls each service received and
// hopwatch's hop table. It is plain appended text rather than a redrawn
// screen, so it reads the same in a terminal, a log and a test.
type view struct {
	w         io.Writer
	admin     *http.Client
	adminURL  string
	slowAfter time.Duration // what users find slow
	start     time.Time
	lastCalls map[string]int64
	// The last hop table, bottleneck report and session counts read, for
	// the run's result.
	lastHops        []hopRow
	lastBottlenecks *bottlenecks
	lastSessions    *hopwatchSessions
	// models reads the model usage hopwatch counted (nil: not shown).
	models     func() ([]modelRow, error)
	lastModels []modelRow
}

func newView(w io.Writer, admin *http.Client, adminURL string, slowAfter time.Duration) *view {
	return &view{w: w, admin: admin, adminURL: adminURL, slowAfter: slowAfter, start: time.Now(), lastCalls: map[string]int64{}}
}

func (v *view) banner(ctx context.Context, o options, chatURL string) {
	fb := "off"
	if o.place.Fallback {
		fb = "on"
	}
	rate := fmt.Sprintf("%g turns/s", o.users.Rate)
	if o.users.Rate == 0 {
		rate = "unpaced"
	}
	until := "Ctrl-C stops it"
	if o.duration > 0 {
		until = fmt.Sprintf("runs for %s", o.duration)
	}
	fmt.Fprintf(v.w, "hopwatch demo: %d users, %s, KB slow on %g%% of calls, fallback %s; %s\n",
		o.users.Users, rate, o.service.KBSlowShare*100, fb, until)
	fmt.Fprintf(v.w, "  chat      POST %s%s (and %s)\n", chatURL, demo.ChatPath, demo.ChatStreamPath)
	fmt.Fprintf(v.w, "  admin     %s (effective config at %s/config)\n", v.adminURL, v.adminURL)
	dash := v.adminURL + "/ui"
	if !v.serves(ctx, "/ui") {
		dash += " (not in this build yet)"
	}
	fmt.Fprintf(v.w, "  dashboard %s\n\n", dash)
}

// serves reports whether the admin server answers path with a success.
func (v *view) serves(ctx context.Context, path string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.adminURL+path, nil)
	if err != nil {
		return false
	}
	res, err := v.admin.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20))
	res.Body.Close()
	return res.StatusCode < 300
}

// table prints one periodic block.
func (v *view) table(ctx context.Context, win, total demo.Summary, calls map[string]int64) {
	elapsed := time.Since(v.start).Round(time.Second)
	fmt.Fprintf(v.w, "── %s %s\n", elapsed, strings.Repeat("─", 60))
	writeTurns(v.w, []labeled{{"last " + win.Span.Round(time.Second).String(), win}, {"total", total}})
	fmt.Fprintf(v.w, "service calls, last %s: %s\n", win.Span.Round(time.Second), formatCalls(calls, v.lastCalls))
	v.lastCalls = calls
	v.hops(ctx)
	v.modelTable()
	v.sessions(ctx, total)
	fmt.Fprintln(v.w)
}

// modelTable prints the tokens, truncated answers, TTFT and cost per model
// that hopwatch read from the model server's responses.
func (v *view) modelTable() {
	if v.models == nil {
		return
	}
	rows, err := v.models()
	if err != nil {
		fmt.Fprintf(v.w, "models: %v\n", err)
		return
	}
	writeModels(v.w, rows)
	v.lastModels = rows
}

// final prints the run's totals.
func (v *view) final(ctx context.Context, total demo.Summary, calls map[string]int64) {
	fmt.Fprintf(v.w, "── done after %s %s\n", total.Span.Round(time.Second), strings.Repeat("─", 50))
	writeTurns(v.w, []labeled{{"total", total}})
	fmt.Fprintf(v.w, "service calls, total: %s\n", formatCalls(calls, nil))
	v.hops(ctx)
	v.modelTable()
	v.sessions(ctx, total)
}

// sessions prints the conversation block: the sessions as the simulation
// knows them (ended conversations judged by hopwatch's rules from what
// went over the wire) next to hopwatch's own count, from its metrics.
func (v *view) sessions(ctx context.Context, total demo.Summary) {
	h, err := fetchSessions(ctx, v)
	var none *notServedError
	switch {
	case errors.As(err, &none):
		fmt.Fprintf(v.w, "sessions: %s\n", cmp.Or(none.reason, "waiting for "+metricsPath))
		return
	case err != nil:
		fmt.Fprintf(v.w, "sessions: %v\n", err)
		return
	}
	writeSessions(v.w, total, h)
	v.lastSessions = &h
}

// writeSessions prints the two rows of the conversation block.
func writeSessions(w io.Writer, total demo.Summary, h hopwatchSessions) {
	s := total.Sessions
	fmt.Fprintf(w, "%-12s %5s %8s %9s %10s %9s %5s %7s\n",
		"sessions", "ended", "resolved", "completed", "frustrated", "abandoned", "good", "repeats")
	fmt.Fprintf(w, "  %-10s %5d %8d %9d %10d %9d %5s %7d   abandoned: %d gave up, %d left satisfied but silent after a bad answer\n",
		"simulated", s.Ended, s.Resolved, s.Completed, s.Frustrated, s.Abandoned, percent(s.Good, s.Ended), total.Repeats,
		s.GaveUp, s.SilentAfterBad)
	valid := h.Ended() - h.Outcomes["evicted"]
	fmt.Fprintf(w, "  %-10s %5d %8d %9d %10d %9d %5s %7d   %d active, %d no_match answers\n",
		"hopwatch", h.Ended(), h.Outcomes["resolved"], h.Outcomes["completed"], h.Outcomes["frustrated"], h.Outcomes["abandoned"],
		percent(h.Good, valid), h.Repeats, h.Active, h.NoMatch)
}

// percent formats n/of, "-" when of is 0.
func percent(n, of int) string {
	if of == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(n)/float64(of))
}

// hops prints hopwatch's hop table and its bottleneck, or why there is
// none.
func (v *view) hops(ctx context.Context) {
	rows, err := fetchHops(ctx, v.admin, v.adminURL)
	var none *notServedError
	switch {
	case errors.As(err, &none) && none.reason == "":
		fmt.Fprintf(v.w, "hop table: waiting for %s\n", hopsPath)
		return
	case errors.As(err, &none):
		fmt.Fprintf(v.w, "hop table: waiting for %s (%s)\n", hopsPath, none.reason)
		return
	case err != nil:
		fmt.Fprintf(v.w, "hop table: %v\n", err)
		return
	}
	// Without a bottleneck report the table still marks its own guess.
	b, _ := fetchBottlenecks(ctx, v.admin, v.adminURL, v.slowAfter)
	writeHops(v.w, rows, b, demo.EntryRoute)
	v.lastHops, v.lastBottlenecks = rows, b
}

type labeled struct {
	label string
	s     demo.Summary
}

func writeTurns(w io.Writer, rows []labeled) {
	fmt.Fprintf(w, "%-10s %6s %7s %6s %5s %8s %7s %9s %8s %8s %8s\n",
		"turns", "count", "rate/s", "errors", "slow", "degraded", "repeats", "abandoned", "p50", "p95", "p99")
	for _, r := range rows {
		s := r.s
		fmt.Fprintf(w, "  %-8s %6d %7.1f %6d %5d %8d %7d %9d %8s %8s %8s\n",
			r.label, s.Turns, s.Rate(), s.Errors, s.Slow, s.Degraded, s.Repeats, s.Abandoned,
			formatDuration(s.P50), formatDuration(s.P95), formatDuration(s.P99))
	}
}

// formatCalls lists each service's calls since prev (nil: since start), in
// the order a turn calls them.
func formatCalls(calls, prev map[string]int64) string {
	parts := make([]string, 0, len(demo.Services))
	for _, name := range demo.Services {
		parts = append(parts, fmt.Sprintf("%s %d", name, calls[name]-prev[name]))
	}
	return strings.Join(parts, " · ")
}

// writeHops prints the hop rows in the order hopwatch gives them and marks
// the bottleneck: the hop hopwatch found to be the largest part of the
// recent slow turns or, before there are any, the highest p95.
func writeHops(w io.Writer, rows []hopRow, b *bottlenecks, entryRoute string) {
	if len(rows) == 0 {
		fmt.Fprintln(w, "hop table: no traffic yet")
		return
	}
	width := len("hop")
	for _, r := range rows {
		width = max(width, len([]rune(r.String())))
	}
	worst, mark := highestP95(rows, entryRoute), "  ◀ highest p95"
	if b != nil && len(b.Hops) > 0 {
		worst, mark = -1, "  ◀ bottleneck"
		for i, r := range rows {
			if r.hopKey == b.Hops[0].hopKey {
				worst = i
			}
		}
	}
	fmt.Fprintf(w, "%s %7s %7s %8s %8s %8s\n", pad("hop", width+2), "rate/s", "errors", "p50", "p95", "p99")
	for i, r := range rows {
		m := ""
		if i == worst {
			m = mark
		}
		fmt.Fprintf(w, "  %s %7.1f %6.1f%% %8s %8s %8s%s\n", pad(r.String(), width), r.Rate, r.ErrorRatio*100,
			formatSeconds(r.P50), formatSeconds(r.P95), formatSeconds(r.P99), m)
	}
	if b != nil && len(b.Hops) > 0 {
		h := b.Hops[0]
		fmt.Fprintf(w, "bottleneck: %s, the largest hop in %d of %d slow turns (%.0f%% of their time)\n",
			h.hopKey, h.Count, b.SlowTraces, h.Share*100)
	}
}

// pad left-aligns s in width runes; fmt's %-*s counts bytes, and the
// arrows are three bytes each.
func pad(s string, width int) string {
	return s + strings.Repeat(" ", max(0, width-len([]rune(s))))
}

func formatSeconds(s float64) string {
	return formatDuration(time.Duration(s * float64(time.Second)))
}

// formatDuration keeps two or three significant digits: the table is read
// at a glance, and the histogram behind it is good to 2% anyway.
func formatDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Round(time.Millisecond)/time.Millisecond)
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}
