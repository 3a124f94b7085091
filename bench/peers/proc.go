package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every Linux architecture Go supports (sysconf(_SC_CLK_TCK)
// has returned 100 since Linux 2.6 for user space, whatever CONFIG_HZ is).
const clockTicks = 100

// procStat is what the harness reads from one /proc/<pid>/stat line.
type procStat struct {
	PPID  int
	Ticks uint64 // utime + stime, in clock ticks
}

// parseStat parses a /proc/<pid>/stat line (proc(5)). The second field, the
// command name, is in parentheses and may itself hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStat(line []byte) (procStat, error) {
	end := bytes.LastIndexByte(line, ')')
	if end < 0 {
		return procStat{}, errors.New("stat: no command name")
	}
	f := strings.Fields(string(line[end+1:]))
	// After the name: state(3) ppid(4) ... utime(14) stime(15), i.e.
	// indexes 0, 1, ... 11, 12 here.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("stat: %d fields after the name, want at least 13", len(f))
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("stat: ppid: %w", err)
	}
	ut, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat: utime: %w", err)
	}
	st, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat: stime: %w", err)
	}
	return procStat{PPID: ppid, Ticks: ut + st}, nil
}

// parseHWM returns VmHWM (peak resident set) in bytes from a
// /proc/<pid>/status file.
func parseHWM(status []byte) (int64, error) { return parseStatusKB(status, "VmHWM") }

// parseStatusKB returns a "Field:   N kB" line of /proc/<pid>/status in
// bytes.
func parseStatusKB(status []byte, field string) (int64, error) {
	prefix := []byte(field + ":")
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("status: %s: unexpected %q", field, bytes.TrimSpace(rest))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("status: %s: %w", field, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("status: no %s", field)
}

// procRoot is /proc; tests point it elsewhere.
type procFS struct{ root string }

// tree returns pid and all its descendants.
func (p procFS) tree(pid int) ([]int, error) {
	ents, err := os.ReadDir(p.root)
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.root, e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		st, err := parseStat(b)
		if err != nil {
			continue
		}
		children[st.PPID] = append(children[st.PPID], n)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out, nil
}

// usage is a snapshot of a process tree: CPU time so far and peak RSS.
type usage struct {
	CPUSeconds float64
	HWMBytes   int64
	RSSBytes   int64 // resident now
}

// treeUsage sums CPU time and VmHWM over pid and its descendants.
func (p procFS) treeUsage(pid int) (usage, error) {
	pids, err := p.tree(pid)
	if err != nil {
		return usage{}, err
	}
	var u usage
	for i, q := range pids {
		dir := filepath.Join(p.root, strconv.Itoa(q))
		b, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			if i == 0 {
				return usage{}, err
			}
			continue
		}
		st, err := parseStat(b)
		if err != nil {
			return usage{}, err
		}
		u.CPUSeconds += float64(st.Ticks) / clockTicks
		if b, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
			if h, err := parseHWM(b); err == nil {
				u.HWMBytes += h
			}
			if r, err := parseStatusKB(b, "VmRSS"); err == nil {
				u.RSSBytes += r
			}
		}
	}
	return u, nil
}
