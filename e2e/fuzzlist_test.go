package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestEveryFuzzTargetRuns: `make fuzz` (and so CI) runs the targets its
// FUZZ_TARGETS list names, as package:Target; a fuzz target that is not on
// the list only ever runs its seeds. Every Fuzz function of the module
// must be listed, and every listed one must exist.
func TestEveryFuzzTargetRuns(t *testing.T) {
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)FUZZ_TARGETS \?=(.*?)\n[^\t]`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("no FUZZ_TARGETS in the Makefile")
	}
	listed := map[string]bool{}
	for _, f := range strings.Fields(strings.ReplaceAll(string(m[1]), "\\", " ")) {
		listed[f] = true
	}
	found := map[string]bool{}
	def := regexp.MustCompile(`(?m)^func (Fuzz\w+)\(\w+ \*testing\.F\)`)
	err = filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != ".." && (d.Name() == "deploy" || d.Name() == "tools" || strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir // other modules, and data
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, fm := range def.FindAllSubmatch(src, -1) {
			rel, _ := filepath.Rel("..", filepath.Dir(path))
			found[filepath.ToSlash(rel)+":"+string(fm[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) == 0 {
		t.Fatal("no fuzz targets found: the walk is wrong")
	}
	for f := range found {
		if !listed[f] {
			t.Errorf("%s is not in the Makefile's FUZZ_TARGETS: make fuzz never fuzzes it", f)
		}
	}
	for f := range listed {
		if !found[f] {
			t.Errorf("FUZZ_TARGETS lists %s, which does not exist", f)
		}
	}
}
