package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireEnv is the switch .ci/run sets once it has installed every
// program these tests need: a missing program is then a failure, not a
// skip.
const requireEnv = "HOPWATCH_E2E"

// needProgram returns the path of an outside program, or ends the test:
// skipped with how to install it, or failed under HOPWATCH_E2E=require.
// candidates are tried in order, empty ones skipped (a path containing a
// slash is used as is, relative to this package's directory; anything else
// is looked up on PATH).
func needProgram(t testing.TB, install string, candidates ...string) string {
	t.Helper()
	candidates = slices.DeleteFunc(candidates, func(c string) bool { return c == "" })
	for _, c := range candidates {
		if strings.Contains(c, "/") {
			if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				abs, err := filepath.Abs(c)
				if err != nil {
					t.Fatal(err)
				}
				return abs
			}
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
	}
	looked := make([]string, len(candidates))
	for i, c := range candidates {
		looked[i] = c + " on PATH"
		if strings.Contains(c, "/") {
			looked[i], _ = filepath.Abs(c)
		}
	}
	msg := fmt.Sprintf("%s not found (looked for %s); install: %s", filepath.Base(candidates[0]), strings.Join(looked, ", "), install)
	if os.Getenv(requireEnv) == "require" {
		t.Fatalf("%s=require: %s", requireEnv, msg)
	}
	t.Skip(msg)
	return ""
}

func loopback(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// process is an outside program run by a test. Its output goes to a file
// that is shown when the test fails.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when Wait has returned
	err  error         // Wait's result, once done is closed
}

// startProcess runs bin with args until the test ends: then SIGTERM, and
// SIGKILL if it has not exited within 10 s. It is always waited for.
func startProcess(t testing.TB, bin string, args ...string) *process {
	t.Helper()
	name := filepath.Base(bin)
	logPath := filepath.Join(t.TempDir(), name+".log")
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = childAttr()
	err = cmd.Start()
	out.Close() // the child holds its own descriptor
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s output (last 40 lines of %s):\n%s", name, logPath, p.tail(40))
		}
	})
	return p
}

func (p *process) stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s did not exit 10s after SIGTERM; killing it", p.name)
		p.cmd.Process.Kill()
		<-p.done
	}
}

// exited reports, without blocking, an early exit as an error.
func (p *process) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited early (%v); output:\n%s", p.name, p.err, p.tail(40))
	default:
		return nil
	}
}

func (p *process) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// eventually calls check every 250 ms until it returns nil, and fails the
// test with check's last error after timeout. p, if not nil, is the
// program being waited on: its early exit ends the wait at once.
func eventually(t testing.TB, timeout time.Duration, what string, p *process, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if perr := p.exitedIfAny(); perr != nil {
			t.Fatalf("%s: %v", what, perr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (p *process) exitedIfAny() error {
	if p == nil {
		return nil
	}
	return p.exited()
}

// apiClient talks to the outside programs' HTTP APIs. Keep-alives are off
// so that no idle connection (and its goroutines) outlives a test.
var apiClient = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// getJSON GETs url and decodes a 200 answer into v; any other status is
// an error carrying the body.
func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	res, err := apiClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %.500s", url, res.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("GET %s: %w in %.500s", url, err, body)
	}
	return nil
}

// dialable reports whether something accepts TCP connections at addr.
func dialable(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}
