package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Admin endpoints the table reads.
const (
	hopsPath        = "/api/hops"
	bottlenecksPath = "/api/bottlenecks"
)

// hopKey names a hop: caller → route → upstream.
type hopKey struct {
	Caller   string `json:"caller"`
	Route    string `json:"route"`
	Upstream string `json:"upstream"`
}

func (k hopKey) String() string { return k.Caller + " → " + k.Route + " → " + k.Upstream }

// hopRow is one row of GET /api/hops: a hop with its rate, error ratio and
// latency percentiles (seconds) over the last minute.
type hopRow struct {
	hopKey
	Rate       float64 `json:"rate"`
	ErrorRatio float64 `json:"error_ratio"`
	P50        float64 `json:"p50"`
	P95        float64 `json:"p95"`
	P99        float64 `json:"p99"`
}

// bottlenecks is GET /api/bottlenecks: the hops that were the largest part
// of slow turns, most often first.
type bottlenecks struct {
	Traces     int             `json:"traces"`
	SlowTraces int             `json:"slow_traces"`
	Hops       []bottleneckHop `json:"hops"`
}

// bottleneckHop is a hop that was the largest part of Count slow turns,
// taking Share (0..1) of their time on average.
type bottleneckHop struct {
	hopKey
	Count int     `json:"count"`
	Share float64 `json:"share"`
}

// notServedError means the admin server has no statistics to give: this
// build does not serve the endpoint (404, no reason), or telemetry is not
// running (503, with the server's reason).
type notServedError struct{ path, reason string }

func (e *notServedError) Error() string {
	if e.reason == "" {
		return e.path + " not served"
	}
	return e.path + ": " + e.reason
}

// fetchHops reads the hop table from the admin server at base. It accepts
// the rows as a bare JSON array or under "hops" in an object, so the demo
// does not break over an envelope.
func fetchHops(ctx context.Context, c *http.Client, base string) ([]hopRow, error) {
	body, err := getJSON(ctx, c, base, hopsPath)
	if err != nil {
		return nil, err
	}
	var rows []hopRow
	if err := json.Unmarshal(body, &rows); err == nil {
		return rows, nil
	}
	var env struct {
		Hops []hopRow `json:"hops"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("%s: %w", hopsPath, err)
	}
	return env.Hops, nil
}

// fetchBottlenecks reads which hops made the slow turns of the last minute
// slow. The window is the one of /api/hops' flat statistics, so the marked
// hop and the numbers beside it agree. A turn is slow when it took at
// least slow: the simulated users' threshold, so "slow turns" in the table
// are the ones users reacted to (hopwatch's default, the entry route's
// p95, would always call the slowest 5% slow, even in a healthy run).
func fetchBottlenecks(ctx context.Context, c *http.Client, base string, slow time.Duration) (*bottlenecks, error) {
	q := url.Values{"window": {"1m"}, "min_duration": {slow.String()}}
	body, err := getJSON(ctx, c, base, bottlenecksPath+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	var b bottlenecks
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, fmt.Errorf("%s: %w", bottlenecksPath, err)
	}
	return &b, nil
}

func getJSON(ctx context.Context, c *http.Client, base, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return nil, err
	}
	res, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	switch res.StatusCode {
	case http.StatusOK:
		return body, nil
	case http.StatusNotFound:
		return nil, &notServedError{path: path}
	case http.StatusServiceUnavailable:
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(body, &e)
		return nil, &notServedError{path: path, reason: cmp.Or(e.Error, res.Status)}
	}
	return nil, fmt.Errorf("%s: %s", path, res.Status)
}

// highestP95 is the table's own guess at the bottleneck when hopwatch has
// no slow turns to analyse: the highest p95 among hops with traffic,
// leaving out the entry route, whose latency is the whole turn and
// contains every other hop. It returns -1 when there is none.
func highestP95(rows []hopRow, entryRoute string) int {
	best := -1
	for i, r := range rows {
		if r.Route == entryRoute || r.Rate <= 0 {
			continue
		}
		if best < 0 || r.P95 > rows[best].P95 {
			best = i
		}
	}
	return best
}
