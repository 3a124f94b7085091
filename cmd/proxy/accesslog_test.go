package main

import (
	"bytes"
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

// TestAccessLogReopenSignal drives the command: the access log file is
// moved away as logrotate does, the reopen signal makes a new one at the
// configured path, and a reload that changes access_log swaps the log.
func TestAccessLogReopenSignal(t *testing.T) {
	if reopenSignal == nil {
		t.Skip("no reopen signal on this platform")
	}
	s := startStack(t)
	p := newPorts(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "hopwatch.yaml")
	logPath := filepath.Join(dir, "access.log")
	withLog := func(out string) string {
		return configText(s, p, "a") + fmt.Sprintf("access_log: {output: %q}\n", out)
	}
	writeFile(t, path, withLog(logPath))
	sig := make(chan os.Signal, 1)
	exit := make(chan int, 1)
	var stderr bytes.Buffer
	go func() {
		exit <- run([]string{"-config", path, "-grace", "5s"}, io.Discard, &lockedWriter{w: &stderr}, sig)
	}()
	call := func(urlPath string) {
		t.Helper()
		testkit.WaitFor(t, "a call through the proxy", func() bool {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", p.http, urlPath))
			if err != nil {
				return false
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	}
	hasLine := func(file, urlPath string) func() bool {
		return func() bool {
			b, _ := os.ReadFile(file)
			return strings.Contains(string(b), `"path":"`+urlPath+`"`)
		}
	}

	call("/first")
	testkit.WaitFor(t, "first line", hasLine(logPath, "/first"))
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	sig <- reopenSignal
	testkit.WaitFor(t, "reopened file", func() bool { _, err := os.Stat(logPath); return err == nil })
	call("/second")
	testkit.WaitFor(t, "second line in the new file", hasLine(logPath, "/second"))
	if hasLine(logPath+".1", "/second")() {
		t.Error("the moved file got a line after the reopen")
	}

	// A reload that moves the log: later lines go to the new path.
	other := filepath.Join(dir, "other.log")
	writeFile(t, path, withLog(other))
	sig <- syscall.SIGHUP
	testkit.WaitFor(t, "log moved by reload", func() bool {
		call("/third")
		return hasLine(other, "/third")()
	})

	sig <- syscall.SIGTERM
	select {
	case code := <-exit:
		if code != 0 {
			t.Fatalf("exit %d; stderr:\n%s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after SIGTERM")
	}
	http.DefaultClient.CloseIdleConnections()
}
