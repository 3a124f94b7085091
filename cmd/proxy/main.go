package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/hopwatch/hopwatch/config"
)

// version is set at build time (-ldflags "-X main.version=v1.2.3").
var version = "dev"

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if reopenSignal != nil {
		signal.Notify(sig, reopenSignal)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, sig))
}

// run is main without the process: tests call it with their own signal
// channel. It returns the exit code.
func run(args []string, stdout, stderr io.Writer, sig <-chan os.Signal) int {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		path      = fs.String("config", "hopwatch.yaml", "configuration file (YAML)")
		check     = fs.Bool("check", false, "validate the configuration, print every error, exit 0 (valid) or 1")
		showVer   = fs.Bool("version", false, "print the version and exit")
		grace     = fs.Duration("grace", 20*time.Second, "on SIGTERM/SIGINT, how long in-flight calls may take to finish; also bounds the drain of listeners removed by a reload")
		logFormat = fs.String("log-format", "text", "log format: text or json")
		logLevel  = fs.String("log-level", "info", "log level: debug, info, warn, error")
		cpuProf   = fs.String("cpuprofile", "", "write a CPU profile (pprof) of the whole run to this file; for benchmarks (bench/peers)")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVer {
		fmt.Fprintln(stdout, "hopwatch", buildVersion())
		return 0
	}
	if *check {
		if _, err := config.Load(*path); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: ok\n", *path)
		return 0
	}
	log, err := newLogger(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if *cpuProf != "" {
		stopProf, err := startCPUProfile(*cpuProf)
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		defer stopProf()
	}
	// Watch before the first load, so that a change written once the
	// proxy is up (ready, even) is never missed; one written between the
	// two costs a reload that finds nothing new.
	watcher, werr := config.NewWatcher(*path, 0)
	a, err := start(*path, *grace, log, stdout)
	if err != nil {
		if watcher != nil {
			watcher.Close()
		}
		log.Error("cannot start", "err", err)
		fmt.Fprintln(stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan error, 1)
	if werr != nil {
		watchDone <- werr
	} else {
		go func() { watchDone <- watcher.Run(ctx, func() { a.reload("file") }) }()
	}
	watching := watchDone // nil once the watcher has ended
	defer func() {
		cancel()
		if watching != nil {
			<-watching
		}
	}()
	for {
		select {
		case s := <-sig:
			if s == syscall.SIGHUP {
				a.reload("sighup")
				continue
			}
			if reopenSignal != nil && s == reopenSignal {
				a.reopenLogs()
				continue
			}
			log.Info("draining", "signal", s.String(), "grace", grace.String())
			a.drain(*grace)
			log.Info("stopped")
			return 0
		case err := <-watching:
			// Reload on file change is gone; SIGHUP still works.
			log.Error("config watcher stopped; reload with SIGHUP", "err", err)
			watching = nil
		}
	}
}

// startCPUProfile profiles the process until the returned function runs
// (at exit, after the drain), so a profile covers exactly one benchmark
// target's life.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("-cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, errors.New("-log-format must be text or json")
}

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}
