package kubernetes_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/hopwatch/hopwatch/deploy/internal/program"
)

// TestConfigMapHotReload runs the real hopwatch binary on the base
// overlay's ConfigMap laid out as kubelet lays out a ConfigMap volume, and
// publishes new versions exactly as kubelet's AtomicWriter does: a new
// timestamped directory, a ..data_tmp symlink to it renamed over ..data,
// the old directory removed. hopwatch.yaml itself (a symlink through
// ..data) never changes. A valid new version must be loaded, an invalid
// one reported while the old configuration keeps serving.
func TestConfigMapHotReload(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cmd/proxy")
	}
	var cm *corev1.ConfigMap
	for _, o := range render(t, "base") {
		if v, ok := o.value.(*corev1.ConfigMap); ok && v.Name == "hopwatch-config" {
			cm = v
		}
	}
	if cm == nil {
		t.Fatal("base renders no ConfigMap hopwatch-config")
	}
	// The pod's addresses become free loopback ports; nothing else changes.
	admin := freeAddr(t)
	original := strings.NewReplacer(
		"0.0.0.0:9901", admin,
		"0.0.0.0:7000", freeAddr(t),
		"0.0.0.0:7080", freeAddr(t),
	).Replace(cm.Data["hopwatch.yaml"])
	if !strings.Contains(original, "timeout: 10s") {
		t.Fatal("the ConfigMap's chat route no longer has timeout: 10s, which this test edits")
	}

	dir := t.TempDir()
	w := &atomicWriter{t: t, dir: dir}
	w.publish(map[string]string{"hopwatch.yaml": original})

	bin := program.BuildProxy(t)
	var log bytes.Buffer
	proc := exec.Command(bin, "-config", filepath.Join(dir, "hopwatch.yaml"), "-grace=2s", "-log-level=warn")
	proc.Stdout, proc.Stderr = io.Discard, &log // read only after Wait
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = proc.Wait(); close(exited) }()
	defer func() {
		proc.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			if waitErr != nil {
				t.Errorf("hopwatch exited with %v after SIGTERM", waitErr)
			}
		case <-time.After(15 * time.Second):
			proc.Process.Kill()
			<-exited
			t.Error("hopwatch did not exit 15s after SIGTERM")
		}
		if t.Failed() {
			t.Logf("hopwatch's log:\n%s", log.String())
		}
	}()

	base := "http://" + admin
	waitFor(t, exited, "hopwatch ready", func() error { return get(base+"/readyz", nil) })
	successes := func() (float64, float64, error) {
		m, err := metrics(base)
		return m[`hopwatch_config_reloads_total{result="success"}`], m[`hopwatch_config_last_reload_success`], err
	}
	before, _, err := successes()
	if err != nil {
		t.Fatal(err)
	}

	for _, step := range []struct {
		name    string
		content string
		check   func() error
	}{
		{
			name:    "valid new version",
			content: strings.Replace(original, "timeout: 10s", "timeout: 11s", 1),
			check: func() error {
				n, ok, err := successes()
				if err != nil {
					return err
				}
				if n <= before || ok != 1 {
					return fmt.Errorf("reloads_total{success} %v (was %v), last_reload_success %v", n, before, ok)
				}
				var body []byte
				if err := get(base+"/config", &body); err != nil {
					return err
				}
				if !bytes.Contains(body, []byte("11s")) {
					return fmt.Errorf("/config does not show the new timeout 11s")
				}
				return nil
			},
		},
		{
			name:    "invalid new version",
			content: original + "\nunknown_field: true\n",
			check: func() error {
				m, err := metrics(base)
				if err != nil {
					return err
				}
				if m[`hopwatch_config_reloads_total{result="failure"}`] < 1 || m["hopwatch_config_last_reload_success"] != 0 {
					return fmt.Errorf("no failed reload counted yet")
				}
				// Still serving, on the last good configuration.
				if err := get(base+"/readyz", nil); err != nil {
					return err
				}
				var body []byte
				if err := get(base+"/config", &body); err != nil {
					return err
				}
				if !bytes.Contains(body, []byte("11s")) {
					return fmt.Errorf("/config lost the last good configuration")
				}
				return nil
			},
		},
	} {
		t.Run(step.name, func(t *testing.T) {
			w.publish(map[string]string{"hopwatch.yaml": step.content})
			waitFor(t, exited, step.name+" noticed", step.check)
		})
	}
}

// atomicWriter publishes ConfigMap versions into dir the way kubelet's
// AtomicWriter (pkg/volume/util/atomic_writer.go) does.
type atomicWriter struct {
	t   *testing.T
	dir string
	n   int
}

func (w *atomicWriter) publish(files map[string]string) {
	t := w.t
	t.Helper()
	w.n++
	// 1. The payload goes into a new hidden timestamped directory.
	ts, err := os.MkdirTemp(w.dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(ts, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// 2. ..data_tmp points at it and is renamed over ..data: the one
	// atomic step that switches every file at once.
	old, _ := os.Readlink(filepath.Join(w.dir, "..data"))
	tmp := filepath.Join(w.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(w.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	// 3. The visible names are links through ..data, made once.
	for name := range files {
		link := filepath.Join(w.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	// 4. The previous version is removed.
	if old != "" {
		if err := os.RemoveAll(filepath.Join(w.dir, old)); err != nil {
			t.Fatal(err)
		}
	}
}

// freeAddr: see testkit.FreePort for why not ":0".
func freeAddr(t *testing.T) string { return testkit.FreeAddr(t) }

var client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// get GETs url and wants 200; body, if not nil, receives the body.
func get(url string, body *[]byte) error {
	res, err := client.Get(url)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 8<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, res.Status)
	}
	if body != nil {
		*body = b
	}
	return nil
}

// metrics reads the unlabelled and labelled samples of /metrics (text
// format) as "name{labels}" → value.
func metrics(base string) (map[string]float64, error) {
	var body []byte
	if err := get(base+"/metrics", &body); err != nil {
		return nil, err
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[i+1:], &v); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// waitFor retries check every 100 ms for up to 20 s (a generous bound:
// the test checks that a change is noticed, never how fast).
func waitFor(t *testing.T, exited <-chan struct{}, what string, check func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-exited:
			t.Fatalf("%s: hopwatch exited early", what)
		case <-ctx.Done():
			t.Fatalf("%s: not within 20s: %v", what, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
