package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/internal/testkit"
)

// TestAccessLogOTLP: with access_log.otlp every access log line also
// reaches the collector as an OTLP log record named hopwatch.access, with
// the line's fields as attributes and the hop's trace and span id as the
// record's own trace context, the trace id the upstream saw, so a log
// backend links each line to its trace. With an output as well, the file
// holds the same lines.
func TestAccessLogOTLP(t *testing.T) {
	for _, tc := range []struct {
		name string
		file bool
	}{
		{"records only", false},
		{"file and records", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPorts(t)
			var mu sync.Mutex
			var seen []string // trace ids of the traceparents the upstream received
			web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tp := strings.Split(r.Header.Get("Traceparent"), "-"); len(tp) == 4 {
					mu.Lock()
					seen = append(seen, tp[1])
					mu.Unlock()
				}
				fmt.Fprint(w, "ok")
			}))
			t.Cleanup(web.Close)
			rec, otlpAddr := startOTLP(t)
			logFile := filepath.Join(t.TempDir(), "access.log")
			output := ""
			if tc.file {
				output = fmt.Sprintf("output: %q, ", logFile)
			}
			cfg := fmt.Sprintf(`admin: {address: "127.0.0.1:%d"}
telemetry:
  tracing:
    otlp: {endpoint: "%s", protocol: grpc}
listeners:
  - {name: http, address: "127.0.0.1:%d", protocol: http}
upstreams:
  - {name: web, protocol: http, endpoints: ["%s"]}
routes:
  - {name: web, listener: http, match: {path_prefix: /}, upstream: web}
access_log: {%sotlp: true}
`, p.admin, otlpAddr, p.http, web.Listener.Addr(), output)
			path := filepath.Join(t.TempDir(), "hopwatch.yaml")
			writeFile(t, path, cfg)
			a, err := start(path, 5*time.Second, testkit.Logger(t), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			const n = 5
			for i := range n {
				resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/page/%d", p.http, i))
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			// The drain closes the access log, which flushes its records.
			a.drain(5 * time.Second)

			rec.mu.Lock()
			var access []map[string]string
			for _, e := range rec.events {
				if e["event"] == "hopwatch.access" {
					access = append(access, e)
				}
			}
			rec.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			if len(access) != n || len(seen) != n {
				t.Fatalf("%d access records, %d calls seen upstream, want %d each: %v", len(access), len(seen), n, access)
			}
			for i, e := range access {
				if e["hopwatch.route"] != "web" || e["hopwatch.trace_id"] != seen[i] || e["record.trace_id"] != seen[i] ||
					e["record.span_id"] == "" || e["record.span_id"] != e["hopwatch.span_id"] {
					t.Errorf("record %d = %v; want route web, trace id %s as attribute and as the record's, and its span id", i, e, seen[i])
				}
			}
			if !tc.file {
				if _, err := os.Stat(logFile); !os.IsNotExist(err) {
					t.Errorf("an access log file exists without an output: %v", err)
				}
				return
			}
			f, err := os.Open(logFile)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var lines []string
			for sc := bufio.NewScanner(f); sc.Scan(); {
				var line struct {
					TraceID string `json:"trace_id"`
				}
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					t.Fatalf("line %q: %v", sc.Text(), err)
				}
				lines = append(lines, line.TraceID)
			}
			if strings.Join(lines, ",") != strings.Join(seen, ",") {
				t.Errorf("the file's trace ids %v, want the records' %v", lines, seen)
			}
		})
	}
}
