package proxy

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestFirstResponseContext pins the context's contract: it and every
// context derived from it report DeadlineExceeded (Err and Cause) when the
// timeout passes before the response starts, Canceled when the parent is
// canceled, and nothing once started; client progress postpones the end.
func TestFirstResponseContext(t *testing.T) {
	const d = 300 * time.Millisecond
	for _, tc := range []struct {
		name string
		// act runs after creation; it returns what must end the context
		// (nil: it must still be live after 2*d).
		act  func(c *firstResponse, cancelParent context.CancelFunc) error
		want error
	}{
		{"times out", func(*firstResponse, context.CancelFunc) error { return nil }, context.DeadlineExceeded},
		{"parent canceled", func(_ *firstResponse, cancel context.CancelFunc) error { cancel(); return nil }, context.Canceled},
		{"started", func(c *firstResponse, _ context.CancelFunc) error { c.started(); return nil }, nil},
		{"touched, then started", func(c *firstResponse, _ context.CancelFunc) error {
			for range 6 { // 300ms in all, 50ms apart
				time.Sleep(d / 6)
				c.touch()
			}
			c.started()
			return nil
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent, cancel := context.WithCancel(context.Background())
			defer cancel()
			c := newFirstResponse(parent, d)
			defer c.release()
			child, ccancel := context.WithCancel(context.WithValue(c, testKey{}, 1))
			defer ccancel()
			after := make(chan struct{})
			stop := context.AfterFunc(c, func() { close(after) })
			defer stop()
			tc.act(c, cancel)
			if tc.want == nil {
				select {
				case <-c.Done():
					t.Fatalf("ended with %v, want live", c.Err())
				case <-time.After(2 * d):
				}
				return
			}
			select {
			case <-child.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("derived context never ended")
			}
			<-after
			for name, got := range map[string]error{
				"Err": c.Err(), "Cause": context.Cause(c), "child Err": child.Err(), "child Cause": context.Cause(child),
			} {
				if !errors.Is(got, tc.want) {
					t.Errorf("%s = %v, want %v", name, got, tc.want)
				}
			}
		})
	}
}

// testKey is a context key of this test only.
type testKey struct{}

// TestFirstResponseAllocs bounds what a call's context costs on the hot
// path (every call on a route without a written timeout): following the
// parent directly, not through inner, spares inner a children map (17
// allocations per call before, with the parent's own).
func TestFirstResponseAllocs(t *testing.T) {
	root, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := testing.AllocsPerRun(200, func() {
		parent, cancel := context.WithCancel(root) // as a request's context is
		fr := newFirstResponse(parent, time.Minute)
		fr.started()
		fr.release()
		cancel()
	})
	if got > 14 {
		t.Fatalf("%v allocations per call, want at most 14", got)
	}
}
