package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// target is one thing the load goes through: nothing (direct), a peer
// proxy, or a hopwatch variant.
type target struct {
	Name string
	// start runs the target and returns its process (nil for direct) and
	// the addresses clients use.
	start func(ctx context.Context, env *runEnv) (*proc, addrs, error)
}

// runEnv is what targets need to start.
type runEnv struct {
	addrs
	dir      string
	workers  int
	hopwatch string // path of the built cmd/proxy binary
	baseline string // the *-baseline targets' binary (-baseline)
}

func directTarget() target {
	return target{Name: "direct", start: func(_ context.Context, e *runEnv) (*proc, addrs, error) {
		a := e.addrs
		a.GRPC, a.HTTP, a.H2C = a.BackendGRPC, a.BackendHTTP, a.BackendHTTP
		return nil, a, nil
	}}
}

func nginxTarget() target {
	return target{Name: "nginx", start: func(ctx context.Context, e *runEnv) (*proc, addrs, error) {
		cfg := filepath.Join(e.dir, "nginx.conf")
		if err := writeRendered(cfg, "nginx.conf.tmpl", renderData{addrs: e.addrs, Dir: e.dir, Workers: e.workers}); err != nil {
			return nil, addrs{}, err
		}
		// -e: nginx 1.22 opens the compiled-in error log before reading
		// the configuration; point it at the scratch directory.
		return startProc(ctx, e, "nginx", "nginx", "-e", filepath.Join(e.dir, "nginx-error.log"), "-p", e.dir, "-c", cfg)
	}}
}

func haproxyTarget() target {
	return target{Name: "haproxy", start: func(ctx context.Context, e *runEnv) (*proc, addrs, error) {
		cfg := filepath.Join(e.dir, "haproxy.cfg")
		if err := writeRendered(cfg, "haproxy.cfg.tmpl", renderData{addrs: e.addrs, Dir: e.dir, Workers: e.workers}); err != nil {
			return nil, addrs{}, err
		}
		return startProc(ctx, e, "haproxy", "haproxy", "-db", "-f", cfg)
	}}
}

// hopwatchTarget is hopwatch in one variant (see hopwatchVariants): store
// only (sampled at 1), with an OTLP exporter into the harness's sink, or
// sampled at 0; relay is the gRPC listener's listeners[].relay ("": the
// frame relay, the default; messages: grpc-go's server).
func hopwatchTarget(name string, v hopwatchVariant) target {
	return target{Name: name, start: func(ctx context.Context, e *runEnv) (*proc, addrs, error) {
		d := renderData{addrs: e.addrs, Dir: e.dir, Variant: name, SampleRatio: v.sample, Relay: v.relay}
		if v.otlp {
			d.Exporter = e.OTLP
		}
		cfg := filepath.Join(e.dir, name+".yaml")
		if err := writeRendered(cfg, "hopwatch.yaml.tmpl", d); err != nil {
			return nil, addrs{}, err
		}
		args := []string{"-config", cfg, "-log-level", "warn"}
		if p := os.Getenv("HOPWATCH_BENCH_CPUPROFILE"); p != "" {
			args = append(args, "-cpuprofile", p+"."+name)
		}
		bin := e.hopwatch
		if v.baseline {
			bin = e.baseline
		}
		return startProc(ctx, e, name, bin, args...)
	}}
}

func writeRendered(path, tmpl string, d renderData) error {
	b, err := render(tmpl, d)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// startProc runs a proxy with its output in the scratch directory and
// waits until all three listeners accept connections.
func startProc(ctx context.Context, e *runEnv, name, prog string, args ...string) (*proc, addrs, error) {
	return startProcEnv(ctx, e, name, nil, prog, args...)
}

// startProcEnv is startProc with variables added to the environment.
func startProcEnv(ctx context.Context, e *runEnv, name string, env []string, prog string, args ...string) (*proc, addrs, error) {
	log, err := os.Create(filepath.Join(e.dir, name+".log"))
	if err != nil {
		return nil, addrs{}, err
	}
	cmd := exec.Command(prog, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Dir = e.dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, addrs{}, fmt.Errorf("%s: %w", name, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); log.Close(); close(exited) }()
	deadline := time.Now().Add(15 * time.Second)
	for _, a := range []string{e.GRPC, e.HTTP, e.H2C} {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-exited:
				out, _ := os.ReadFile(filepath.Join(e.dir, name+".log"))
				return nil, addrs{}, fmt.Errorf("%s exited at start: %s", name, out)
			case <-ctx.Done():
				stopProc(cmd, exited)
				return nil, addrs{}, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				stopProc(cmd, exited)
				return nil, addrs{}, fmt.Errorf("%s: %s not listening after 15s", name, a)
			}
		}
	}
	return &proc{cmd: cmd, exited: exited}, e.addrs, nil
}

// proc is a started target process.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has been waited for
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop ends the target: SIGTERM, then SIGKILL after 10 s.
func (p *proc) stop() {
	if p != nil {
		stopProc(p.cmd, p.exited)
	}
}

func stopProc(cmd *exec.Cmd, exited chan struct{}) {
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		cmd.Process.Kill()
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}
