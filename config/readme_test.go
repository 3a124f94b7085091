package config_test

import (
	"os"
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/config"
)

// TestReadmeExample keeps the README's configuration reference true: its
// example must load without errors.
func TestReadmeExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "## Configuration reference")
	if !ok {
		t.Fatal("README has no configuration reference")
	}
	_, rest, ok = strings.Cut(rest, "```yaml\n")
	if !ok {
		t.Fatal("no yaml block in the configuration reference")
	}
	example, _, _ := strings.Cut(rest, "```")
	if _, err := config.Parse("README.md", []byte(example)); err != nil {
		t.Fatalf("the README example does not load:\n%v", err)
	}
}
