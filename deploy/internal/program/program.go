// Package program finds the outside programs the deploy/ tests run
// (promtool, prometheus, jaeger), with the repository's rule: a missing
// program skips the test with how to install it, and fails it when
// HOPWATCH_E2E=require (as .ci/run sets after installing them). It is the
// same rule as e2e/programs_test.go's, for this separate module.
//
// It is test support: never on hopwatch's request path.
package program

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// RequireEnv is the variable that turns a missing program into a failure.
const RequireEnv = "HOPWATCH_E2E"

// Need returns the absolute path of the first candidate found (one with a
// slash is a path, relative to the test's directory; others are looked up
// on PATH; empty ones are skipped), or ends the test.
func Need(t testing.TB, install string, candidates ...string) string {
	t.Helper()
	var looked []string
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if strings.Contains(c, "/") {
			abs, err := filepath.Abs(c)
			if err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(abs); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				return abs
			}
			looked = append(looked, abs)
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p
		}
		looked = append(looked, c+" on PATH")
	}
	msg := fmt.Sprintf("%s not found (looked for %s); install: %s", filepath.Base(candidates[len(candidates)-1]), strings.Join(looked, ", "), install)
	if os.Getenv(RequireEnv) == "require" {
		t.Fatalf("%s=require: %s", RequireEnv, msg)
	}
	t.Skip(msg)
	return ""
}

// BuildProxy builds hopwatch (cmd/proxy) from the repository's own module,
// with the proxy's go.mod (not this module's), into a temporary directory,
// and returns the binary's path.
func BuildProxy(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("program: cannot locate the repository")
	}
	root := filepath.Join(filepath.Dir(file), "..", "..", "..")
	out := filepath.Join(t.TempDir(), "hopwatch")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/proxy")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/proxy (in %s): %v\n%s", root, err, b)
	}
	return out
}
