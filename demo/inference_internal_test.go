package demo

import "testing"

// TestReplyWordsBounded: a caller's max_tokens cannot make a reply (and
// its allocation) as large as it likes.
func TestReplyWordsBounded(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		want int
	}{
		{"none", 0, 0},
		{"asked", 12, 12},
		{"huge", 1 << 40, maxReplyTokens},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := len(replyWords("hours", tc.n)); got != tc.want {
				t.Errorf("len(replyWords(%d)) = %d, want %d", tc.n, got, tc.want)
			}
		})
	}
}
