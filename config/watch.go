package config

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is the quiet time Watch waits for when given none. Editors
// save in several steps (truncate, write, rename, chmod); reloading after
// the first would read a half-written file.
const DefaultDebounce = 100 * time.Millisecond

// kubeDataLink is the symlink a Kubernetes ConfigMap volume swaps atomically
// on update: the file is a link through ..data into a timestamped directory,
// so the file itself sees no event at all.
const kubeDataLink = "..data"

// Watch calls onChange after the file at path may have changed, until ctx is
// done; then it returns nil. It watches the file's directory, not the file:
// editors (write to a temp file, rename over) and Kubernetes (swap the
// ..data symlink) replace the file, and a watch on the old inode would go
// quiet. Events are filtered to the file's name and ..data, and a burst of
// them within debounce (<= 0: DefaultDebounce) yields one call.
//
// onChange runs on Watch's goroutine, never concurrently with itself; the
// caller reloads and decides what a bad file means. A missed-events error
// from the watcher also triggers onChange, since a reload that finds nothing
// new costs less than one that never happens. Watch returns an error at
// once if the directory cannot be watched. The file itself need not exist
// yet.
func Watch(ctx context.Context, path string, debounce time.Duration, onChange func()) error {
	w, err := NewWatcher(path, debounce)
	if err != nil {
		return err
	}
	return w.Run(ctx, onChange)
}

// Watcher is a Watch split in two: NewWatcher starts watching at once, Run
// delivers the changes. A caller that loads the file between the two (the
// proxy at start-up) misses no change written after NewWatch returned: the
// events wait in the watcher until Run reads them.
type Watcher struct {
	w        *fsnotify.Watcher
	name     string
	debounce time.Duration
}

// NewWatcher starts watching path's directory; Run must follow (it closes
// the watcher), or Close when it will not.
func NewWatcher(path string, debounce time.Duration) (*Watcher, error) {
	if debounce <= 0 {
		debounce = DefaultDebounce
	}
	dir, name := filepath.Split(filepath.Clean(path))
	if dir == "" {
		dir = "."
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("config: watch %s: %w", path, err)
	}
	if err := w.Add(dir); err != nil {
		w.Close()
		return nil, fmt.Errorf("config: watch directory of %s: %w", path, err)
	}
	return &Watcher{w: w, name: name, debounce: debounce}, nil
}

// Close stops a watcher that Run will not be called on.
func (x *Watcher) Close() error { return x.w.Close() }

// Run calls onChange as Watch does, until ctx is done, then closes the
// watcher and returns nil.
func (x *Watcher) Run(ctx context.Context, onChange func()) error {
	w := x.w
	// Close stops fsnotify's reader goroutine and waits for it.
	defer w.Close()
	quiet := time.NewTimer(x.debounce)
	quiet.Stop()
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if affects(ev, x.name) {
				quiet.Reset(x.debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			if err != nil {
				quiet.Reset(x.debounce)
			}
		case <-quiet.C:
			onChange()
		}
	}
}

// affects reports whether ev may have changed the content of the file
// called name. Chmod alone does not change content, and some tools (backup,
// indexers) touch modes often.
func affects(ev fsnotify.Event, name string) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	base := filepath.Base(ev.Name)
	return base == name || base == kubeDataLink
}
