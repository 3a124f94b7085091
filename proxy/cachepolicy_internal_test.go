package proxy

import (
	"net/http"
	"slices"
	"testing"
)

func TestHasDirective(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string
		want  bool
	}{
		{"none", nil, false},
		{"public", []string{"public, max-age=60"}, false},
		{"no-store", []string{"no-store"}, true},
		{"case and spaces", []string{"max-age=0 ,  NO-CACHE"}, true},
		{"second line", []string{"max-age=60", "private"}, true},
		{"with fields", []string{`private="Set-Cookie, X-Token"`}, true},
		{"a quoted value is not a directive", []string{`community="no-store-ish"`}, false},
		{"prefix is not enough", []string{"no-stored"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := hasDirective(tc.lines, "no-store", "no-cache", "private"); got != tc.want {
				t.Errorf("hasDirective(%q) = %v, want %v", tc.lines, got, tc.want)
			}
		})
	}
}

func TestVaryNames(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lines []string
		want  []string
		ok    bool
	}{
		{"none", nil, nil, true},
		{"one", []string{"accept-language"}, []string{"Accept-Language"}, true},
		{"sorted, deduplicated, several lines", []string{"Origin, accept-language", "ORIGIN"}, []string{"Accept-Language", "Origin"}, true},
		{"star", []string{"Origin", "*"}, nil, false},
		{"empty members", []string{" , Origin,"}, []string{"Origin"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{"Vary": tc.lines}
			got, ok := varyNames(h)
			if ok != tc.ok || !slices.Equal(got, tc.want) {
				t.Errorf("varyNames(%q) = %q, %v; want %q, %v", tc.lines, got, ok, tc.want, tc.ok)
			}
		})
	}
}
