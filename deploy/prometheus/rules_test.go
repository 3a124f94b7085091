package prometheus_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/common/promslog"
	promconfig "github.com/prometheus/prometheus/config"
	_ "github.com/prometheus/prometheus/discovery/kubernetes" // registers kubernetes_sd_configs

	"github.com/hopwatch/hopwatch/deploy/internal/program"
)

const installPromtool = "apt-get install -y prometheus (Debian; provides promtool)"

// TestRules runs promtool on the rules: check rules (syntax, PromQL, no
// duplicate rules), then test rules (rules_test.yaml: recording rules'
// values and which alerts fire, on synthetic series).
func TestRules(t *testing.T) {
	promtool := program.Need(t, installPromtool, "promtool")
	for _, tc := range []struct {
		name string
		args []string
		want string // in the output
	}{
		{"check rules", []string{"check", "rules", "rules.yaml"}, "SUCCESS"},
		{"test rules", []string{"test", "rules", "rules_test.yaml"}, "SUCCESS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := exec.Command(promtool, tc.args...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(tc.args, " "), err, out)
			}
			t.Logf("promtool %s:\n%s", strings.Join(tc.args, " "), out)
		})
	}
}

// TestReadmeScrapeConfig loads the scrape configuration README's "Run in
// production" section gives for Prometheus without the Operator with
// Prometheus's own configuration loader, Kubernetes service discovery
// included (Debian's promtool is built without it, so it cannot check
// this snippet).
func TestReadmeScrapeConfig(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "\n### Scraping\n")
	if !ok {
		t.Fatal("README has no Scraping section")
	}
	_, rest, ok = strings.Cut(rest, "```yaml\n")
	if !ok {
		t.Fatal("no yaml block in README's Scraping section")
	}
	block, _, _ := strings.Cut(rest, "```")
	cfg, err := promconfig.Load(block, promslog.NewNopLogger())
	if err != nil {
		t.Fatalf("README's scrape configuration does not load: %v\n%s", err, block)
	}
	if len(cfg.ScrapeConfigs) != 1 || len(cfg.ScrapeConfigs[0].ServiceDiscoveryConfigs) != 1 {
		t.Fatalf("want one scrape job with one service discovery, got %+v", cfg.ScrapeConfigs)
	}
}
