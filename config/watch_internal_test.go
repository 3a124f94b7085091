package config

import (
	"testing"

	"github.com/fsnotify/fsnotify"
)

func TestAffects(t *testing.T) {
	for _, tc := range []struct {
		name string
		ev   fsnotify.Event
		want bool
	}{
		{"write to the file", fsnotify.Event{Name: "/etc/hw/hopwatch.yaml", Op: fsnotify.Write}, true},
		{"rename onto the file", fsnotify.Event{Name: "/etc/hw/hopwatch.yaml", Op: fsnotify.Create}, true},
		{"file removed", fsnotify.Event{Name: "/etc/hw/hopwatch.yaml", Op: fsnotify.Remove}, true},
		{"kubernetes ..data swapped", fsnotify.Event{Name: "/etc/hw/..data", Op: fsnotify.Create}, true},
		{"chmod only", fsnotify.Event{Name: "/etc/hw/hopwatch.yaml", Op: fsnotify.Chmod}, false},
		{"chmod with write", fsnotify.Event{Name: "/etc/hw/hopwatch.yaml", Op: fsnotify.Chmod | fsnotify.Write}, true},
		{"editor swap file", fsnotify.Event{Name: "/etc/hw/.hopwatch.yaml.swp", Op: fsnotify.Write}, false},
		{"other file", fsnotify.Event{Name: "/etc/hw/other.yaml", Op: fsnotify.Write}, false},
		{"kubernetes ..data_tmp", fsnotify.Event{Name: "/etc/hw/..data_tmp", Op: fsnotify.Create}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := affects(tc.ev, "hopwatch.yaml"); got != tc.want {
				t.Errorf("affects(%v) = %v, want %v", tc.ev, got, tc.want)
			}
		})
	}
}
