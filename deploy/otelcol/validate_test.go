package otelcol_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/deploy/internal/program"
)

const installJaeger = "(cd tools/jaeger && go build -o ../../bin/jaeger github.com/jaegertracing/jaeger/cmd/jaeger), as .ci/run does"

// TestValidate runs `jaeger validate` (the pinned Jaeger v2, a Collector
// distribution) on the collector configuration and both Jaeger
// configurations, and on broken copies of them, which must be refused: a
// validation that accepted anything would prove nothing.
func TestValidate(t *testing.T) {
	bin := program.Need(t, installJaeger, os.Getenv("HOPWATCH_JAEGER"), "../../bin/jaeger", "jaeger")
	for _, tc := range []struct {
		name     string
		file     string
		old, new string // a replacement that breaks the file ("" for the file as it is)
		want     string // in the refusal
	}{
		{name: "collector", file: "collector.yaml"},
		{name: "jaeger memory", file: "../jaeger/config.yaml"},
		{name: "jaeger clickhouse", file: "../jaeger/config-clickhouse.yaml"},
		{name: "collector: misspelt batch field", file: "collector.yaml", old: "send_batch_size:", new: "send_batch_sise:", want: "send_batch_sise"},
		{name: "collector: memory limit over 100%", file: "collector.yaml", old: "limit_percentage: 80", new: "limit_percentage: 180", want: "limit_percentage"},
		{name: "collector: exporter not configured", file: "collector.yaml", old: "exporters: [otlp/jaeger, otlp/tempo]", new: "exporters: [otlp/jaeger, otlp/zipkin]", want: "otlp/zipkin"},
		{name: "jaeger clickhouse: misspelt storage field", file: "../jaeger/config-clickhouse.yaml", old: "create_schema:", new: "create_shema:", want: "create_shema"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.file
			if tc.old != "" {
				data, err := os.ReadFile(tc.file)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(data), tc.old) {
					t.Fatalf("%s no longer contains %q", tc.file, tc.old)
				}
				path = filepath.Join(t.TempDir(), filepath.Base(tc.file))
				if err := os.WriteFile(path, []byte(strings.Replace(string(data), tc.old, tc.new, 1)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			abs, err := filepath.Abs(path)
			if err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "validate", "--config", "file:"+abs).CombinedOutput()
			switch {
			case tc.old == "" && err != nil:
				t.Fatalf("jaeger validate %s: %v\n%s", tc.file, err, out)
			case tc.old != "" && err == nil:
				t.Fatalf("jaeger validate accepted %s with %q → %q:\n%s", tc.file, tc.old, tc.new, out)
			case tc.old != "" && !strings.Contains(string(out), tc.want):
				t.Fatalf("jaeger validate refused %s, but not for %q:\n%s", tc.file, tc.want, out)
			}
		})
	}
}
