package e2e

import (
	"encoding/json"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// process is an outside program run by a test; its output goes to a file
// shown when the test fails.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProcess runs bin until the test ends: then SIGTERM, and SIGKILL
// after 10 s. It is always waited for.
func startProcess(t *testing.T, bin string, args ...string) *process {
	t.Helper()
	name := filepath.Base(bin)
	logPath := filepath.Join(t.TempDir(), name+".log")
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Start()
	out.Close()
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				t.Errorf("%s did not exit 10s after SIGTERM", name)
				cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() {
			t.Logf("%s output (last 30 lines):\n%s", name, p.tail(30))
		}
	})
	return p
}

func (p *process) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited early (%v):\n%s", p.name, p.err, p.tail(30))
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

// eventually retries check every 250 ms until it passes, p exits, or
// timeout.
func eventually(t *testing.T, timeout time.Duration, what string, p *process, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if perr := p.exited(); perr != nil {
			t.Fatalf("%s: %v", what, perr)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// freeAddr: see testkit.FreePort for why not ":0".
func freeAddr(t *testing.T) string { return testkit.FreeAddr(t) }

func listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// apiClient keeps no idle connections, so none outlives a test.
var apiClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// httpGet wants 200 from url; body, if not nil, gets the body.
func httpGet(url string, body *[]byte) error {
	res, err := apiClient.Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %.300s", url, res.Status, b)
	}
	if body != nil {
		*body = b
	}
	return nil
}

func getJSON(url string, v any) error {
	var b []byte
	if err := httpGet(url, &b); err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}
