package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/internal/testkit"
)

// TestConfigFIFO: a FIFO at the configuration path (a mistake, or an
// attacker with write access to the directory) is refused with a clear
// error at startup, by -check and on reload; the running configuration
// keeps serving, /config answers, and SIGTERM still ends the process. It
// used to block the reload in open(2) while it held the lock that /config
// and the reload after it wait for.
func TestConfigFIFO(t *testing.T) {
	s := startStack(t)
	p := newPorts(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "hopwatch.yaml")
	client := &http.Client{Timeout: 5 * time.Second}
	// Whatever happens, nothing may stay blocked on the FIFO after the test.
	t.Cleanup(func() {
		if w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
	})
	mkfifo := func(t *testing.T) {
		t.Helper()
		os.Remove(path)
		if err := syscall.Mkfifo(path, 0o644); err != nil {
			t.Skipf("cannot make a FIFO here: %v", err)
		}
	}
	within := func(t *testing.T, what string, d time.Duration, f func()) {
		t.Helper()
		done := make(chan struct{})
		go func() { defer close(done); f() }()
		select {
		case <-done:
		case <-time.After(d):
			t.Fatalf("%s blocked", what)
		}
	}

	t.Run("startup and -check", func(t *testing.T) {
		mkfifo(t)
		within(t, "-check", 5*time.Second, func() {
			var stderr bytes.Buffer
			if code := run([]string{"-check", "-config", path}, io.Discard, &stderr, nil); code != 1 || !strings.Contains(stderr.String(), "not a regular file") {
				t.Errorf("-check on a FIFO: exit %d, %q; want 1 and 'not a regular file'", code, stderr.String())
			}
		})
		within(t, "start", 5*time.Second, func() {
			if a, err := start(path, time.Second, testkit.Logger(t), io.Discard); err == nil {
				a.drain(time.Second)
				t.Error("start accepted a FIFO")
			} else if !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("start: %v, want 'not a regular file'", err)
			}
		})
	})

	t.Run("reload", func(t *testing.T) {
		os.Remove(path)
		writeFile(t, path, configText(s, p, "a"))
		sig := make(chan os.Signal, 1)
		exit := make(chan int, 1)
		go func() {
			exit <- run([]string{"-config", path, "-grace", "2s"}, io.Discard, io.Discard, sig)
		}()
		adminURL := fmt.Sprintf("http://127.0.0.1:%d", p.admin)
		testkit.WaitFor(t, "ready", func() bool {
			resp, err := client.Get(adminURL + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
		type doc struct {
			LastReload reloadResult `json:"last_reload"`
		}
		configDoc := func() (doc, error) {
			var d doc
			resp, err := client.Get(adminURL + "/config")
			if err != nil {
				return d, err
			}
			defer resp.Body.Close()
			return d, json.NewDecoder(resp.Body).Decode(&d)
		}

		// The watcher sees the FIFO appear; SIGHUP asks again.
		mkfifo(t)
		for _, trigger := range []string{"file", "sighup"} {
			if trigger == "sighup" {
				sig <- syscall.SIGHUP
			}
			testkit.WaitFor(t, trigger+" reload refused", func() bool {
				d, err := configDoc()
				if err != nil {
					t.Fatalf("/config: %v", err) // the client's timeout: /config hangs
				}
				return d.LastReload.Trigger == trigger && !d.LastReload.OK &&
					strings.Contains(strings.Join(d.LastReload.Errors, " "), "not a regular file")
			})
		}
		// The configuration from before keeps serving.
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/still", p.http))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "hello /still" {
			t.Fatalf("old configuration: got %q", b)
		}
		sig <- syscall.SIGTERM
		select {
		case code := <-exit:
			if code != 0 {
				t.Fatalf("exit %d after SIGTERM", code)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("SIGTERM did not end the process")
		}
		client.CloseIdleConnections()
	})
}
