package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/hopwatch/hopwatch/demo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// options are the command line, checked.
type options struct {
	duration time.Duration
	every    time.Duration
	users    demo.UsersConfig
	service  demo.Config
	place    demo.Placement
	logLevel slog.Level
}

// run is main without the process: tests call it with their own context.
// It returns the exit code: 0 after a clean run, 1 when the demo cannot
// start, 2 for a bad command line (including -fallback=on while hopwatch
// has no fallbacks).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0 // as the flag package does for -h
	}
	if err != nil {
		if !errors.Is(err, errFlagsReported) {
			fmt.Fprintln(stderr, "demo:", err)
		}
		return 2
	}
	// -fallback=on must fail before anything starts, and say why: the
	// section is rendered and checked by hopwatch's own loader, so once
	// fallbacks land this check passes by itself.
	if _, err := demo.ParseHopwatchConfig(nil, o.place); err != nil {
		fmt.Fprintln(stderr, "demo:", describeStartError(err))
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	// The demo services' OpenTelemetry SDK reports export problems to
	// the process-wide handler, which would print over the table. A
	// partial success from hopwatch's receiver is expected (a service's
	// span can arrive before hopwatch has seen its trace): debug only.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		level := slog.LevelWarn
		if strings.Contains(err.Error(), "partial success") {
			level = slog.LevelDebug
		}
		log.Log(context.Background(), level, "demo services' span export", "err", err)
	}))
	if _, err := runDemo(ctx, o, stdout, log); err != nil {
		fmt.Fprintln(stderr, "demo:", describeStartError(err))
		return 1
	}
	return 0
}

// errFlagsReported is a command line the flag package has already
// complained about, with the usage.
var errFlagsReported = errors.New("bad command line")

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := demo.DefaultConfig()
	var (
		duration    = fs.Duration("duration", 0, "how long to run (0: until Ctrl-C)")
		rate        = fs.Float64("rate", 4, "user turns per second, across all users (0: as fast as answers come)")
		users       = fs.Int("users", 8, "simulated users talking at once")
		fallback    = fs.String("fallback", "off", "on: give the knowledge-base route a fallback (answer from cache or a static degraded answer after 300ms); off: none")
		adminAddr   = fs.String("admin", "", "admin server address (default: as in "+demo.ConfigFile+", 127.0.0.1:9901)")
		grpcAddr    = fs.String("grpc", "", "hopwatch grpc listener address (default: as in the file, 127.0.0.1:7000)")
		httpAddr    = fs.String("http", "", "hopwatch http listener address (default: as in the file, 127.0.0.1:7080)")
		kbSlowShare = fs.Float64("kb-slow-share", def.KBSlowShare, "share of knowledge-base calls (0..1) that take 1.5-3s")
		streamShare = fs.Float64("stream-share", 0.5, "share of turns (0..1) that use the SSE endpoint /v1/chat/stream")
		slowAfter   = fs.Duration("slow-after", time.Second, "answers slower than this are slow to users (some repeat the question, some give up) and to hopwatch (conversation.turn_slo)")
		noMatch     = fs.Float64("no-match-share", def.NoMatchShare, "share of questions (0..1) the NLU does not understand (verdict no_match)")
		degrade     = fs.Duration("degrade-after", 2*time.Minute, "after this long the NLU stops understanding -degraded-no-match-share of questions while latency and errors stay green: watch the good-session SLI fall (0: never)")
		degraded    = fs.Float64("degraded-no-match-share", 0.4, "share of questions (0..1) the NLU does not understand after -degrade-after")
		closeShare  = fs.Float64("close-share", 0.8, "share of conversations (0..1) that end with a goodbye the DM marks resolved; the rest end silently")
		convs       = fs.Int("conversations", 0, "conversations per user, then the run ends once hopwatch has ended every session (0: until -duration or Ctrl-C)")
		idle        = fs.Duration("idle-timeout", 0, "hopwatch's conversation.idle_timeout (0: as in the file, 10s)")
		events      = fs.String("events", "", "append hopwatch's turn and session events to this file as JSON lines (\"-\": stdout)")
		every       = fs.Duration("every", 5*time.Second, "how often to print the table")
		seed        = fs.Uint64("seed", 0, "random seed for latencies and users (0: random)")
		logLevel    = fs.String("log-level", "warn", "hopwatch log level: debug, info, warn, error")
		receive     = fs.Bool("receive", false, "hopwatch receives the services' own spans over OTLP on its admin address (telemetry.receive.otlp), so the dashboard's waterfalls show what happened inside each service between the hops (default: only hopwatch's spans; each turn is still one tree, the services' calls stitched under the attempts that reached them)")
		otlp        = fs.String("otlp", "", "host:port of an OTLP/gRPC collector (Jaeger, an OpenTelemetry Collector) that hopwatch and the services, each traced with otelgrpc/otelhttp, export their spans to (empty: the services' spans go nowhere, hopwatch's to its built-in store)")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return options{}, err
		}
		return options{}, errFlagsReported
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	o := options{duration: *duration, every: *every, service: def}
	switch {
	case *duration < 0:
		return o, errors.New("-duration must not be negative")
	case *rate < 0:
		return o, errors.New("-rate must not be negative")
	case *users < 1:
		return o, errors.New("-users must be at least 1")
	case *kbSlowShare < 0 || *kbSlowShare > 1:
		return o, errors.New("-kb-slow-share must be between 0 and 1")
	case *streamShare < 0 || *streamShare > 1:
		return o, errors.New("-stream-share must be between 0 and 1")
	case *slowAfter <= 0:
		return o, errors.New("-slow-after must be positive")
	case *noMatch < 0 || *noMatch > 1:
		return o, errors.New("-no-match-share must be between 0 and 1")
	case *degraded < 0 || *degraded > 1:
		return o, errors.New("-degraded-no-match-share must be between 0 and 1")
	case *degrade < 0:
		return o, errors.New("-degrade-after must not be negative")
	case *closeShare < 0 || *closeShare > 1:
		return o, errors.New("-close-share must be between 0 and 1")
	case *convs < 0:
		return o, errors.New("-conversations must not be negative")
	case *idle < 0:
		return o, errors.New("-idle-timeout must not be negative")
	case *every <= 0:
		return o, errors.New("-every must be positive")
	}
	switch *fallback {
	case "on":
		o.place.Fallback = true
	case "off":
	default:
		return o, fmt.Errorf("-fallback must be on or off, not %q", *fallback)
	}
	if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return o, fmt.Errorf("-log-level: %w", err)
	}
	o.place.Admin, o.place.GRPC, o.place.HTTP = *adminAddr, *grpcAddr, *httpAddr
	// What users find slow is what hopwatch calls slow: the simulation's
	// ground truth and hopwatch's count use one threshold.
	o.place.TurnSLO, o.place.IdleTimeout, o.place.EventsFile = *slowAfter, *idle, *events
	o.service.KBSlowShare = *kbSlowShare
	o.service.NoMatchShare = *noMatch
	o.service.DegradeAfter = *degrade
	o.service.DegradedNoMatchShare = *degraded
	o.service.Seed = *seed
	o.service.OTLP, o.place.OTLP = *otlp, *otlp
	o.place.Receive = *receive
	o.users = demo.UsersConfig{
		Users:         *users,
		Rate:          *rate,
		SlowAfter:     *slowAfter,
		StreamShare:   *streamShare,
		CloseShare:    *closeShare,
		Conversations: *convs,
	}
	if *seed != 0 {
		o.users.Rand = rand.New(rand.NewPCG(*seed, *seed+1))
	}
	return o, nil
}

// result is what a finished run measured.
type result struct {
	total demo.Summary
	calls map[string]int64
	// hops, bottlenecks and sessions are hopwatch's, as last printed (nil
	// when the admin server did not serve them).
	hops        []hopRow
	bottlenecks *bottlenecks
	models      []modelRow
	sessions    *hopwatchSessions
}

// runDemo starts everything, prints tables until ctx ends or the duration
// is up, then stops everything and prints the totals.
func runDemo(ctx context.Context, o options, stdout io.Writer, log *slog.Logger) (result, error) {
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	a, err := start(o.service, o.place, log)
	if err != nil {
		return result{}, err
	}
	adminClient := &http.Client{Timeout: 2 * time.Second}
	defer adminClient.CloseIdleConnections()
	v := newView(stdout, adminClient, a.adminURL(), o.users.SlowAfter)
	v.models = func() ([]modelRow, error) { return modelUsage(a.tel) }
	v.banner(ctx, o, a.httpURL())

	rec := demo.NewRecorder(nil)
	usersCfg := o.users
	usersCfg.URL = a.httpURL()
	usersCtx, stopUsers := context.WithCancel(ctx)
	usersDone := make(chan error, 1)
	go func() { usersDone <- demo.RunUsers(usersCtx, usersCfg, rec) }()

	tick := time.NewTicker(o.every)
	defer tick.Stop()
	var usersErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case usersErr = <-usersDone:
			// A bad users configuration, or every user has had its
			// -conversations.
			usersDone = nil
			if usersErr == nil {
				a.waitSessionsEnded(ctx)
			}
			break loop
		case <-tick.C:
			v.table(ctx, rec.Window(), rec.Total(), a.stack.Calls())
		}
	}
	stopUsers()
	if usersDone != nil {
		usersErr = <-usersDone
	}
	res := result{total: rec.Total(), calls: a.stack.Calls()}
	if usersErr == nil {
		// Before stopping, while the admin server still answers. The run's
		// own ctx may be over; the fetch gets a short one of its own.
		fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v.final(fctx, res.total, res.calls)
		cancel()
		res.hops, res.bottlenecks, res.models, res.sessions = v.lastHops, v.lastBottlenecks, v.lastModels, v.lastSessions
	}
	a.stop()
	return res, usersErr
}
