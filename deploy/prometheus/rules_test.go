package prometheus_test

import (
	"os/exec"
	"strings"
	"testing"

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
