package config_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/config"
)

// waitLimit is generous: these tests check that a change is noticed, never
// how fast.
const waitLimit = 20 * time.Second

func TestWatch(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup prepares dir and returns the path to watch.
		setup func(t *testing.T, dir string) string
		// change modifies the file; i counts attempts, so each call is new.
		change func(t *testing.T, dir, path string, i int)
	}{
		{
			name:  "write temp then rename",
			setup: writeInitial,
			change: func(t *testing.T, dir, path string, i int) {
				tmp := filepath.Join(dir, ".hopwatch.yaml.swp")
				mustWrite(t, tmp, i)
				if err := os.Rename(tmp, path); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:  "write in place",
			setup: writeInitial,
			change: func(t *testing.T, _, path string, i int) {
				mustWrite(t, path, i)
			},
		},
		{
			name: "file created after watch starts",
			setup: func(t *testing.T, dir string) string {
				return filepath.Join(dir, "hopwatch.yaml")
			},
			change: func(t *testing.T, _, path string, i int) {
				mustWrite(t, path, i)
			},
		},
		{
			// The layout kubelet gives a ConfigMap volume: hopwatch.yaml →
			// ..data/hopwatch.yaml, ..data → ..<timestamp>. An update writes a
			// new timestamped directory and renames a new ..data link over
			// the old one; hopwatch.yaml itself never changes.
			name: "kubernetes ..data symlink swap",
			setup: func(t *testing.T, dir string) string {
				kubeVersion(t, dir, 0)
				if err := os.Symlink(filepath.Join("..data", "hopwatch.yaml"), filepath.Join(dir, "hopwatch.yaml")); err != nil {
					t.Fatal(err)
				}
				return filepath.Join(dir, "hopwatch.yaml")
			},
			change: func(t *testing.T, dir, _ string, i int) {
				kubeVersion(t, dir, i+1)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tc.setup(t, dir)

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			changed := make(chan struct{}, 1)
			done := make(chan error, 1)
			go func() {
				done <- config.Watch(ctx, path, 10*time.Millisecond, func() {
					select {
					case changed <- struct{}{}:
					default:
					}
				})
			}()

			// Watch may not have added its watch yet when the first change
			// lands, so keep changing the file until one is noticed.
			deadline := time.After(waitLimit)
			poke := time.NewTicker(200 * time.Millisecond)
			defer poke.Stop()
			tc.change(t, dir, path, 0)
		wait:
			for i := 1; ; i++ {
				select {
				case <-changed:
					break wait
				case err := <-done:
					t.Fatalf("Watch returned early: %v", err)
				case <-poke.C:
					tc.change(t, dir, path, i)
				case <-deadline:
					t.Fatalf("onChange not called within %v", waitLimit)
				}
			}

			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Watch = %v after cancel, want nil", err)
				}
			case <-time.After(waitLimit):
				t.Fatal("Watch did not return after cancel")
			}
		})
	}
}

func TestWatchMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "hopwatch.yaml")
	err := config.Watch(context.Background(), path, 0, func() {})
	if err == nil {
		t.Fatal("Watch of a missing directory returned nil")
	}
}

func writeInitial(t *testing.T, dir string) string {
	path := filepath.Join(dir, "hopwatch.yaml")
	mustWrite(t, path, -1)
	return path
}

func mustWrite(t *testing.T, path string, i int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(fmt.Sprintf("# version %d\n", i)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// kubeVersion publishes version i the way kubelet's atomic writer does.
func kubeVersion(t *testing.T, dir string, i int) {
	t.Helper()
	version := fmt.Sprintf("..2026_01_01_00_00_%02d.%d", i%60, i)
	if err := os.Mkdir(filepath.Join(dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, version, "hopwatch.yaml"), i)
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

// TestWatcherMissesNothing: a change written after NewWatcher returns and
// before Run starts (the proxy loads its file in between) is delivered by
// Run, without a second change to poke it. The proxy was ready before its
// watch was added, so a change written right after start-up was lost.
func TestWatcherMissesNothing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, dir, path string)
	}{
		{"write in place", func(t *testing.T, _, path string) { mustWrite(t, path, 1) }},
		{"write temp then rename", func(t *testing.T, dir, path string) {
			tmp := filepath.Join(dir, ".hopwatch.yaml.tmp")
			mustWrite(t, tmp, 1)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeInitial(t, dir)
			w, err := config.NewWatcher(path, 10*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			tc.change(t, dir, path)
			ctx, cancel := context.WithCancel(context.Background())
			changed := make(chan struct{}, 1)
			done := make(chan error, 1)
			go func() {
				done <- w.Run(ctx, func() {
					select {
					case changed <- struct{}{}:
					default:
					}
				})
			}()
			select {
			case <-changed:
			case <-time.After(waitLimit):
				t.Errorf("the change written before Run was not delivered within %v", waitLimit)
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v after cancel, want nil", err)
			}
		})
	}
}

func TestNewWatcherMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "hopwatch.yaml")
	if w, err := config.NewWatcher(path, 0); err == nil {
		w.Close()
		t.Fatal("NewWatcher of a missing directory returned nil")
	}
}
