package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// streamMessages is how many messages one server-streaming call returns.
const streamMessages = 50

// loadResult is what one load-generator run measured.
type loadResult struct {
	Ops      float64 // operations carried: requests, stream messages or SSE events
	Seconds  float64 // how long the run lasted
	Failed   int64   // errors and non-OK / non-2xx answers
	P50, P99 time.Duration
	Errors   []string // what failed, as the load generator tells it
}

// workload is one kind of traffic, run by an outside load generator.
type workload struct {
	Name string
	Unit string  // what Ops counts: req, msg, event
	Rate int     // fixed rate for the latency run, in calls/s
	Per  float64 // ops per call (stream messages, SSE events)
	// run drives the load: rate 0 is saturation.
	run func(ctx context.Context, l *loader, a addrs, d time.Duration, rate int) (loadResult, error)
}

// loader runs the outside programs.
type loader struct {
	ghz    string
	protos string // import path holding bot/v1/bot.proto
	dir    string
}

func workloads() []workload {
	return []workload{
		{Name: "grpc-unary", Unit: "req", Rate: 1000, Per: 1, run: func(ctx context.Context, l *loader, a addrs, d time.Duration, rate int) (loadResult, error) {
			return l.runGHZ(ctx, a.GRPC, "bot.v1.NLU/Parse", `{"session_id":"s1","text_hash":"ab","text_length":2}`, d, rate, 1)
		}},
		{Name: "grpc-stream", Unit: "msg", Rate: 50, Per: streamMessages, run: func(ctx context.Context, l *loader, a addrs, d time.Duration, rate int) (loadResult, error) {
			return l.runGHZ(ctx, a.GRPC, "bot.v1.Inference/Generate", fmt.Sprintf(`{"session_id":"s1","max_tokens":%d}`, streamMessages), d, rate, streamMessages)
		}},
		{Name: "http1", Unit: "req", Rate: 1000, Per: 1, run: func(ctx context.Context, l *loader, a addrs, d time.Duration, rate int) (loadResult, error) {
			url := "http://" + a.HTTP + "/nlu/parse"
			if rate == 0 {
				return l.runWrk(ctx, url, d)
			}
			return l.runH2load(ctx, url, true, d, rate, 1)
		}},
		{Name: "h2c", Unit: "req", Rate: 1000, Per: 1, run: func(ctx context.Context, l *loader, a addrs, d time.Duration, rate int) (loadResult, error) {
			return l.runH2load(ctx, "http://"+a.H2C+"/nlu/parse", false, d, rate, 1)
		}},
		{Name: "sse", Unit: "event", Rate: 100, Per: sseEvents, run: func(ctx context.Context, l *loader, a addrs, d time.Duration, rate int) (loadResult, error) {
			return l.runH2load(ctx, "http://"+a.HTTP+"/sse/tokens", true, d, rate, sseEvents)
		}},
	}
}

// The load shapes: gRPC 16 concurrent calls over 2 connections; HTTP/1.1
// 32 keep-alive connections; h2c 2 connections with 16 streams each.
const (
	grpcConcurrency = 16
	grpcConns       = 2
	httpConns       = 32
	h2Conns         = 2
	h2Streams       = 16
)

// openStreamTokens is how many tokens each of the concurrently open
// streams carries, slowTokenGap apart: about a second per stream.
const (
	openStreamTokens = 20
	openStreamConns  = 20
)

// runOpenStreams opens n server streams at once (n calls, n workers, over
// openStreamConns connections) and lets each run to its end.
func (l *loader) runOpenStreams(ctx context.Context, addr string, n int) (loadResult, error) {
	args := []string{"--insecure", "--proto", filepath.Join(l.protos, "bot/v1/bot.proto"), "--import-paths", l.protos,
		"--call", "bot.v1.Inference/Generate", "-d", fmt.Sprintf(`{"session_id":"s1","prompt":%q,"max_tokens":%d}`, slowPrompt, openStreamTokens),
		"-c", strconv.Itoa(n), "--connections", strconv.Itoa(min(n, openStreamConns)), "-n", strconv.Itoa(n), "-t", "60s", "-O", "json", addr}
	out, err := exec.CommandContext(ctx, l.ghz, args...).Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("ghz: %w", withStderr(err))
	}
	return parseGHZ(out, 1)
}

func (l *loader) runGHZ(ctx context.Context, addr, call, data string, d time.Duration, rate int, per float64) (loadResult, error) {
	args := []string{"--insecure", "--proto", filepath.Join(l.protos, "bot/v1/bot.proto"), "--import-paths", l.protos,
		"--call", call, "-d", data, "-c", strconv.Itoa(grpcConcurrency), "--connections", strconv.Itoa(grpcConns),
		"-z", d.String(), "-O", "json"}
	if rate > 0 {
		args = append(args, "--rps", strconv.Itoa(rate))
	}
	args = append(args, addr)
	out, err := exec.CommandContext(ctx, l.ghz, args...).Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("ghz: %w", withStderr(err))
	}
	return parseGHZ(out, per)
}

// parseGHZ reads ghz's JSON report (-O json). Durations are nanoseconds.
func parseGHZ(out []byte, per float64) (loadResult, error) {
	var r struct {
		Count   int64 `json:"count"`
		Total   int64 `json:"total"`
		Latency []struct {
			Percentage int   `json:"percentage"`
			Latency    int64 `json:"latency"`
		} `json:"latencyDistribution"`
		Status map[string]int64 `json:"statusCodeDistribution"`
		Errors map[string]int64 `json:"errorDistribution"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return loadResult{}, fmt.Errorf("ghz report: %w", err)
	}
	if r.Total <= 0 {
		return loadResult{}, errors.New("ghz report: no total duration")
	}
	ok := r.Status["OK"]
	res := loadResult{Ops: float64(ok) * per, Seconds: time.Duration(r.Total).Seconds()}
	for e, n := range r.Errors {
		if isClientClose(e) {
			continue
		}
		res.Failed += n
		res.Errors = append(res.Errors, fmt.Sprintf("%d× %s", n, e))
	}
	slices.Sort(res.Errors)
	for _, p := range r.Latency {
		switch p.Percentage {
		case 50:
			res.P50 = time.Duration(p.Latency)
		case 99:
			res.P99 = time.Duration(p.Latency)
		}
	}
	return res, nil
}

// isClientClose tells ghz's own cut-off from a failure: when a timed run
// ends, ghz closes its connections under the calls still in flight and
// reports each of them as an error, whatever the server did. Only errors
// about a connection ghz itself closed are left out.
func isClientClose(e string) bool {
	return strings.Contains(e, "grpc: the client connection is closing") ||
		strings.Contains(e, "use of closed network connection")
}

func (l *loader) runWrk(ctx context.Context, url string, d time.Duration) (loadResult, error) {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	out, err := exec.CommandContext(ctx, "wrk", "-t", "2", "-c", strconv.Itoa(httpConns), "-d", strconv.Itoa(secs)+"s", url).Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("wrk: %w", withStderr(err))
	}
	return parseWrk(out)
}

var (
	wrkTotal  = regexp.MustCompile(`(\d+) requests in ([\d.]+)(us|ms|s|m|h)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkSocket = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// parseWrk reads wrk's text summary.
func parseWrk(out []byte) (loadResult, error) {
	m := wrkTotal.FindSubmatch(out)
	if m == nil {
		return loadResult{}, fmt.Errorf("wrk: no request count in %q", out)
	}
	n, _ := strconv.ParseFloat(string(m[1]), 64)
	d, err := time.ParseDuration(string(m[2]) + string(m[3]))
	if err != nil || d <= 0 {
		return loadResult{}, fmt.Errorf("wrk: duration %q", m[2])
	}
	var failed int64
	if m := wrkNon2xx.FindSubmatch(out); m != nil {
		v, _ := strconv.ParseInt(string(m[1]), 10, 64)
		failed += v
	}
	if m := wrkSocket.FindSubmatch(out); m != nil {
		for _, g := range m[1:] {
			v, _ := strconv.ParseInt(string(g), 10, 64)
			failed += v
		}
	}
	return loadResult{Ops: n - float64(failed), Seconds: d.Seconds(), Failed: failed}, nil
}

// runH2load drives HTTP/2 (h2c prior knowledge) or, with h1, HTTP/1.1.
// At a fixed rate its per-request log gives the percentiles.
func (l *loader) runH2load(ctx context.Context, url string, h1 bool, d time.Duration, rate int, per float64) (loadResult, error) {
	clients, streams := h2Conns, h2Streams
	if h1 {
		clients, streams = httpConns, 1
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{"-c", strconv.Itoa(clients), "-m", strconv.Itoa(streams), "-D", strconv.Itoa(secs)}
	if h1 {
		args = append(args, "--h1")
	}
	logFile := ""
	if rate > 0 {
		// --rps is per client: spread the rate over the clients.
		args = append(args, "--rps", strconv.FormatFloat(float64(rate)/float64(clients), 'f', 2, 64))
		logFile = filepath.Join(l.dir, "h2load.log")
		os.Remove(logFile)
		args = append(args, "--log-file", logFile)
	}
	args = append(args, url)
	out, err := exec.CommandContext(ctx, "h2load", args...).Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("h2load: %w", withStderr(err))
	}
	res, err := parseH2load(out, per)
	if err != nil || logFile == "" {
		return res, err
	}
	f, err := os.Open(logFile)
	if err != nil {
		return res, err
	}
	defer f.Close()
	lat, err := parseH2loadLog(f)
	if err != nil {
		return res, err
	}
	res.P50, res.P99 = percentile(lat, 50), percentile(lat, 99)
	return res, nil
}

var (
	h2Finished = regexp.MustCompile(`finished in ([\d.]+)(us|ms|s|m|h),`)
	h2Requests = regexp.MustCompile(`requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2Status   = regexp.MustCompile(`status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
)

// parseH2load reads h2load's text summary. Requests still open when a
// timed run ends are neither carried nor failed.
func parseH2load(out []byte, per float64) (loadResult, error) {
	m := h2Finished.FindSubmatch(out)
	r := h2Requests.FindSubmatch(out)
	s := h2Status.FindSubmatch(out)
	if m == nil || r == nil || s == nil {
		return loadResult{}, fmt.Errorf("h2load: unexpected summary %q", out)
	}
	d, err := time.ParseDuration(string(m[1]) + string(m[2]))
	if err != nil || d <= 0 {
		return loadResult{}, fmt.Errorf("h2load: duration %q", m[1])
	}
	num := func(b []byte) int64 { v, _ := strconv.ParseInt(string(b), 10, 64); return v }
	ok := num(s[1]) + num(s[2])
	failed := num(r[3]) + num(s[3]) + num(s[4])
	return loadResult{Ops: float64(ok) * per, Seconds: d.Seconds(), Failed: failed}, nil
}

// parseH2loadLog reads h2load's --log-file: start time (µs since the
// epoch), status (-1: failed), µs until the end of the response. Failed
// rows carry no latency.
func parseH2loadLog(f io.Reader) ([]time.Duration, error) {
	var lat []time.Duration
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) < 3 {
			return nil, fmt.Errorf("h2load log: %q", sc.Text())
		}
		if cols[1] == "-1" {
			continue
		}
		us, err := strconv.ParseInt(cols[2], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("h2load log: %w", err)
		}
		lat = append(lat, time.Duration(us)*time.Microsecond)
	}
	return lat, sc.Err()
}

// percentile is the nearest-rank percentile of lat (which it sorts).
func percentile(lat []time.Duration, p float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	i := int(float64(len(lat))*p/100+0.5) - 1
	return lat[min(max(i, 0), len(lat)-1)]
}

func withStderr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return err
}
