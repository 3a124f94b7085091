package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hopwatch/hopwatch/routes"
)

func main() {
	if spec := os.Getenv(floorEnv); spec != "" {
		if err := runFloor(spec); err != nil {
			fmt.Fprintln(os.Stderr, "bench/peers go-floor:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench/peers:", err)
		os.Exit(1)
	}
}

var allTargets = []string{"direct", "nginx", "haproxy", "hopwatch", "hopwatch-otlp", "hopwatch-sample0", "hopwatch-messages", "go-floor"}

func targetByName(name string) (target, bool) {
	switch name {
	case "direct":
		return directTarget(), true
	case "nginx":
		return nginxTarget(), true
	case "haproxy":
		return haproxyTarget(), true
	case "go-floor":
		return floorTarget(), true
	}
	if v, ok := hopwatchVariants[name]; ok {
		return hopwatchTarget(name, v), true
	}
	return target{}, false
}

// hopwatchVariant is how one hopwatch target is configured.
type hopwatchVariant struct {
	sample float64 // tracing sample_ratio
	otlp   bool    // an OTLP exporter into the harness's sink
	relay  string  // the gRPC listener's listeners[].relay ("": the default)
	// baseline: run the -baseline binary rather than -hopwatch.
	baseline bool
}

// hopwatchVariants: "hopwatch", "hopwatch-otlp" and "hopwatch-sample0"
// run the gRPC listener as users run it, on the default (the frame relay),
// so that issue 13's goals are measured on what users get;
// "hopwatch-messages" is "hopwatch" on grpc-go's path (relay: messages),
// for comparison.
var hopwatchVariants = map[string]hopwatchVariant{
	"hopwatch":          {sample: 1},
	"hopwatch-otlp":     {sample: 1, otlp: true},
	"hopwatch-sample0":  {sample: 0},
	"hopwatch-messages": {sample: 1, relay: routes.ListenerRelayMessages},
	// "hopwatch" and "hopwatch-otlp" run from the -baseline binary
	// (another build, e.g. the commit before a change), for before/after
	// figures in one run.
	"hopwatch-baseline":      {sample: 1, baseline: true},
	"hopwatch-otlp-baseline": {sample: 1, otlp: true, baseline: true},
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	var (
		rounds     = fs.Int("rounds", 3, "rounds; every figure is the median over them")
		dur        = fs.Duration("duration", 4*time.Second, "length of each saturation run")
		rateDur    = fs.Duration("rate-duration", 3*time.Second, "length of each fixed-rate (latency) run")
		warmup     = fs.Duration("warmup", time.Second, "unmeasured load before each workload on each target (0: none)")
		targetList = fs.String("targets", strings.Join(allTargets, ","), "targets, comma separated")
		wlList     = fs.String("workloads", "", "workloads, comma separated (default all)")
		basePort   = fs.Int("base-port", 19200, "first of 7 consecutive loopback ports the run uses")
		hopwatch   = fs.String("hopwatch", "bin/proxy", "hopwatch binary (built from cmd/proxy)")
		baseline   = fs.String("baseline", "", "a second hopwatch binary, measured as the targets hopwatch-baseline and hopwatch-otlp-baseline (name them in -targets)")
		ghz        = fs.String("ghz", "ghz", "ghz binary")
		protos     = fs.String("protos", "proto", "import path of bot/v1/bot.proto")
		idleN      = fs.Int("idle-conns", 10000, "idle keep-alive connections whose RSS cost is measured per proxy (0: skip; HAProxy is skipped, its maxconn is bounded by the file limit)")
		idleWait   = fs.Duration("idle-wait", time.Second, "how long the idle connections stay open before the proxy's RSS is read")
		streamsN   = fs.Int("open-streams", 1000, "server streams held open at once through each target (0: skip)")
		out        = fs.String("out", "docs/benchmarks.md", "report to update (between its markers); empty: stdout only")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	var targets []target
	var names []string
	for _, n := range strings.Split(*targetList, ",") {
		t, ok := targetByName(strings.TrimSpace(n))
		if !ok {
			return fmt.Errorf("unknown target %q (known: %s)", n, strings.Join(allTargets, ", "))
		}
		targets = append(targets, t)
		names = append(names, t.Name)
	}
	wls := workloads()
	if *wlList != "" {
		want := strings.Split(*wlList, ",")
		wls = slices.DeleteFunc(wls, func(w workload) bool { return !slices.Contains(want, w.Name) })
		if len(wls) != len(want) {
			return fmt.Errorf("unknown workload in %q", *wlList)
		}
	}
	progs := []*string{new("nginx"), new("haproxy"), new("wrk"), new("h2load"), ghz, hopwatch}
	for _, n := range names {
		if hopwatchVariants[n].baseline {
			if *baseline == "" {
				return fmt.Errorf("target %s needs -baseline (a hopwatch binary)", n)
			}
			progs = append(progs, baseline)
			break
		}
	}
	for _, prog := range progs {
		p, err := exec.LookPath(*prog)
		if err != nil {
			return fmt.Errorf("%s is missing (make bench-peers installs it): %w", *prog, err)
		}
		// Absolute: targets run in the scratch directory.
		if *prog, err = filepath.Abs(p); err != nil {
			return err
		}
	}
	if p, err := filepath.Abs(*protos); err == nil {
		*protos = p
	}
	dir, err := os.MkdirTemp("", "bench-peers-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	a := newAddrs(*basePort)
	be, err := startBackend(a.BackendGRPC, a.BackendHTTP)
	if err != nil {
		return err
	}
	defer be.Close()
	sk, err := startSink(a.OTLP)
	if err != nil {
		return fmt.Errorf("otlp sink: %w", err)
	}
	defer sk.Close()

	env := &runEnv{addrs: a, dir: dir, workers: runtime.NumCPU(), hopwatch: *hopwatch, baseline: *baseline}
	l := &loader{ghz: *ghz, protos: *protos, dir: dir}
	proc := procFS{root: "/proc"}
	res := newResults()
	for r := range *rounds {
		for _, t := range rotate(targets, r) {
			if err := ctx.Err(); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "round %d/%d: %s\n", r+1, *rounds, t.Name)
			if *idleN > 0 && t.Name != "direct" && t.Name != "haproxy" {
				if err := measureIdle(ctx, stdout, env, proc, t, *idleN, *idleWait, res); err != nil {
					return fmt.Errorf("round %d: %s: idle connections: %w", r+1, t.Name, err)
				}
			}
			spans0 := sk.spans.Load()
			p, ta, err := t.start(ctx, env)
			if err != nil {
				return fmt.Errorf("round %d: %s: %w", r+1, t.Name, err)
			}
			err = measureTarget(ctx, stdout, l, proc, p, ta, t.Name, wls, *dur, *rateDur, *warmup, res)
			if err == nil && *streamsN > 0 {
				var sr loadResult
				if sr, err = l.runOpenStreams(ctx, ta.GRPC, *streamsN); err == nil {
					res.streams[t.Name] = append(res.streams[t.Name], sr)
					fmt.Fprintf(stdout, "  open streams %d of %d completed, %d failed\n", int(sr.Ops), *streamsN, sr.Failed)
					for _, e := range sr.Errors {
						fmt.Fprintf(stdout, "    open streams: %s\n", e)
					}
				}
			}
			if p != nil {
				if u, uerr := proc.treeUsage(p.pid()); uerr == nil {
					res.rss[t.Name] = append(res.rss[t.Name], float64(u.HWMBytes))
				}
			}
			p.stop()
			if err != nil {
				return fmt.Errorf("round %d: %s: %w", r+1, t.Name, err)
			}
			if hopwatchVariants[t.Name].otlp {
				res.spans[t.Name] += sk.spans.Load() - spans0
			}
		}
	}
	info := runInfo{
		When: time.Now(), Machine: describeMachine(ctx, *ghz), Rounds: *rounds, Duration: *dur, RateWindow: *rateDur,
		Targets: names, WorkloadUnits: map[string]string{}, Rates: map[string]string{}, IdleConns: *idleN, OpenStreams: *streamsN,
	}
	for _, w := range wls {
		info.Workloads = append(info.Workloads, w.Name)
		info.WorkloadUnits[w.Name] = w.Unit
		info.Rates[w.Name] = fmt.Sprintf("%d calls/s", w.Rate)
	}
	gen := renderTables(res, info)
	fmt.Fprint(stdout, "\n"+gen)
	if *out == "" {
		return nil
	}
	return writeReport(*out, gen)
}

// measureIdle starts the target fresh, opens n idle keep-alive
// connections to its HTTP/1.1 listener (one request each), and records the
// target's resident memory while they are open.
func measureIdle(ctx context.Context, stdout io.Writer, env *runEnv, proc procFS, t target, n int, wait time.Duration, res *results) error {
	p, a, err := t.start(ctx, env)
	if err != nil {
		return err
	}
	defer p.stop()
	ic, closeAll := openIdle(ctx, a.HTTP, n)
	defer closeAll()
	select { // let goroutines park and buffers settle
	case <-time.After(wait):
	case <-ctx.Done():
		return ctx.Err()
	}
	u, err := proc.treeUsage(p.pid())
	if err != nil {
		return err
	}
	res.idleRSS[t.Name] = append(res.idleRSS[t.Name], float64(u.RSSBytes))
	res.idleFailed[t.Name] += int64(ic.Failed)
	fmt.Fprintf(stdout, "  idle         %d connections open (%d not kept): RSS %.1f MiB\n", ic.Open, ic.Failed, float64(u.RSSBytes)/(1<<20))
	return nil
}

// measureTarget runs every workload against one started target.
func measureTarget(ctx context.Context, stdout io.Writer, l *loader, proc procFS, p *proc, a addrs, name string, wls []workload, dur, rateDur, warmup time.Duration, res *results) error {
	for _, w := range wls {
		if warmup > 0 {
			if _, err := w.run(ctx, l, a, warmup, 0); err != nil {
				return fmt.Errorf("%s warm-up: %w", w.Name, err)
			}
		}
		var before usage
		if p != nil {
			var err error
			if before, err = proc.treeUsage(p.pid()); err != nil {
				return err
			}
		}
		sat, err := w.run(ctx, l, a, dur, 0)
		if err != nil {
			return fmt.Errorf("%s: %w", w.Name, err)
		}
		for _, e := range sat.Errors {
			fmt.Fprintf(stdout, "    %s: %s\n", w.Name, e)
		}
		s := sample{CPUPerOp: math.NaN(), Throughput: sat.Ops / sat.Seconds, Failed: sat.Failed}
		if p != nil {
			after, err := proc.treeUsage(p.pid())
			if err != nil {
				return err
			}
			if sat.Ops > 0 {
				s.CPUPerOp = (after.CPUSeconds - before.CPUSeconds) / sat.Ops * 1e6
			}
		}
		if rateDur > 0 {
			fixed, err := w.run(ctx, l, a, rateDur, w.Rate)
			if err != nil {
				return fmt.Errorf("%s at %d/s: %w", w.Name, w.Rate, err)
			}
			s.P50, s.P99, s.Failed = fixed.P50, fixed.P99, s.Failed+fixed.Failed
			for _, e := range fixed.Errors {
				fmt.Fprintf(stdout, "    %s at %d/s: %s\n", w.Name, w.Rate, e)
			}
		}
		fmt.Fprintf(stdout, "  %-12s %8.1f µs/%s  %9.0f %s/s  p50 %v p99 %v  failed %d\n", w.Name, s.CPUPerOp, w.Unit, s.Throughput, w.Unit, s.P50, s.P99, s.Failed)
		res.add(name, w.Name, s)
	}
	return nil
}

// ghzVersion names the ghz in use: a go-installed ghz says "dev", so the
// version install.sh recorded next to it is preferred.
func ghzVersion(ghz string, version func(...string) string) string {
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(ghz), "ghz.version")); err == nil {
		return "ghz " + strings.TrimSpace(string(b))
	}
	return "ghz " + version(ghz, "--version")
}

// describeMachine is the report's machine line: CPU, cores, memory,
// kernel, the load at the start (the machine may be shared) and the
// versions of everything measured.
func describeMachine(ctx context.Context, ghz string) string {
	var parts []string
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				parts = append(parts, strings.TrimSpace(v))
				break
			}
		}
	}
	parts = append(parts, fmt.Sprintf("%d CPUs", runtime.NumCPU()))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if line, _, ok := strings.Cut(string(b), "\n"); ok {
			parts = append(parts, strings.Join(strings.Fields(line), " "))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(string(b)))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			parts = append(parts, "load average at the end "+strings.Join(f[:3], " "))
		}
	}
	parts = append(parts, runtime.Version())
	version := func(args ...string) string {
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil && len(out) == 0 {
			return args[0] + " ?"
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	parts = append(parts, version("nginx", "-v"), version("haproxy", "-v"), version("wrk", "--version"), version("h2load", "--version"), ghzVersion(ghz, version))
	return strings.Join(parts, "; ")
}
