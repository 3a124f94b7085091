package proxy

import (
	"errors"
	"io"
	"math"
	"reflect"
	"slices"
	"testing"
	"time"
)

// usableExcept returns a usable func for which the listed indexes are down.
func usableExcept(down ...int) func(int) bool {
	return func(i int) bool { return !slices.Contains(down, i) }
}

func mask(idx ...int) uint64 {
	var m uint64
	for _, i := range idx {
		m |= 1 << i
	}
	return m
}

func makeEndpoints(n int) []*endpoint {
	eps := make([]*endpoint, n)
	for i := range eps {
		eps[i] = &endpoint{addr: "ep" + string(rune('a'+i%26))}
	}
	return eps
}

func TestCandidates(t *testing.T) {
	seq := func(from, to int) []int { // [from, to)
		var s []int
		for i := from; i < to; i++ {
			s = append(s, i)
		}
		return s
	}
	cases := []struct {
		name   string
		n      int
		tried  uint64
		usable func(int) bool
		want   []int
	}{
		{"all usable, none tried", 3, 0, usableExcept(), []int{0, 1, 2}},
		{"tried are excluded", 4, mask(0, 2), usableExcept(), []int{1, 3}},
		{"down are excluded", 4, 0, usableExcept(1, 3), []int{0, 2}},
		{"tried and down are excluded", 4, mask(0), usableExcept(2), []int{1, 3}},
		{"only untried usable one", 3, mask(0, 1), usableExcept(), []int{2}},
		{"every untried one down: all untried", 4, mask(1), usableExcept(0, 2, 3), []int{0, 2, 3}},
		{"every one down: all", 3, 0, usableExcept(0, 1, 2), []int{0, 1, 2}},
		{"the usable one was tried, the rest down: the down ones", 3, mask(1), usableExcept(0, 2), []int{0, 2}},
		{"all tried", 3, mask(0, 1, 2), usableExcept(), nil},
		{"all tried, some down", 3, mask(0, 1, 2), usableExcept(1), nil},
		{"no endpoints", 0, 0, usableExcept(), nil},
		{"single endpoint", 1, 0, usableExcept(), []int{0}},
		{"single endpoint down", 1, 0, usableExcept(0), []int{0}},
		{"beyond 64 the mask cannot exclude", 66, math.MaxUint64, usableExcept(), []int{64, 65}},
		{"beyond 64, down ones still excluded", 66, math.MaxUint64, usableExcept(64), []int{65}},
		{"beyond 64, all down: untried ones", 66, math.MaxUint64, func(int) bool { return false }, []int{64, 65}},
		{"many endpoints, bit 63 tried", 64, mask(63), usableExcept(), seq(0, 63)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eps := makeEndpoints(tc.n)
			got := candidates(make([]int, 0, 4), eps, tc.tried, tc.usable)
			if len(got) == 0 {
				got = nil
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("candidates = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCandidatesReusesBuffer(t *testing.T) {
	eps := makeEndpoints(3)
	buf := []int{9, 9, 9, 9}
	got := candidates(buf, eps, 0, usableExcept())
	if !reflect.DeepEqual(got, []int{0, 1, 2}) || &got[0] != &buf[0] {
		t.Fatalf("candidates = %v, want [0 1 2] in the given buffer", got)
	}
}

func TestRoundRobinPick(t *testing.T) {
	cases := []struct {
		name   string
		n      int
		tried  uint64
		usable func(int) bool
		want   []int // successive picks
	}{
		{"cycles through all", 3, 0, usableExcept(), []int{0, 1, 2, 0, 1, 2, 0}},
		{"skips a down endpoint", 3, 0, usableExcept(1), []int{0, 2, 0, 2}},
		{"skips tried endpoints", 4, mask(0, 3), usableExcept(), []int{1, 2, 1, 2}},
		{"only one candidate left", 3, mask(0, 2), usableExcept(), []int{1, 1, 1}},
		{"all down: still cycles (may have recovered)", 3, 0, usableExcept(0, 1, 2), []int{0, 1, 2, 0}},
		{"untried ones down, tried one up: the down ones", 3, mask(0), usableExcept(1, 2), []int{1, 2, 1}},
		{"all tried", 3, mask(0, 1, 2), usableExcept(), []int{-1, -1}},
		{"no endpoints", 0, 0, usableExcept(), []int{-1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rr := &roundRobin{}
			eps := makeEndpoints(tc.n)
			var got []int
			for range tc.want {
				got = append(got, rr.pick(eps, tc.tried, tc.usable))
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("picks = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRoundRobinRetry follows one request's attempts: each pick adds to the
// tried mask, so every endpoint is attempted once and then none.
func TestRoundRobinRetry(t *testing.T) {
	rr := &roundRobin{}
	eps := makeEndpoints(4)
	var tried uint64
	seen := map[int]bool{}
	for range 4 {
		i := rr.pick(eps, tried, usableExcept(2))
		if i < 0 || seen[i] {
			t.Fatalf("pick %d after %v", i, seen)
		}
		seen[i] = true
		tried |= 1 << i
	}
	if i := rr.pick(eps, tried, usableExcept(2)); i != -1 {
		t.Fatalf("pick after all were tried = %d, want -1", i)
	}
}

func TestP2CEWMAPick(t *testing.T) {
	type ep struct {
		ewma     time.Duration
		inflight int64
	}
	cases := []struct {
		name   string
		eps    []ep
		tried  uint64
		usable func(int) bool
		// allowed lists the picks that are correct; every trial must be
		// one of them. always, when set, must be picked every time.
		allowed []int
		never   []int
	}{
		{"no endpoints", nil, 0, usableExcept(), []int{-1}, nil},
		{"all tried", []ep{{}, {}}, mask(0, 1), usableExcept(), []int{-1}, nil},
		{"single endpoint", []ep{{ewma: time.Second}}, 0, usableExcept(), []int{0}, nil},
		{"of two, the faster", []ep{{ewma: 50 * time.Millisecond}, {ewma: time.Millisecond}}, 0, usableExcept(), []int{1}, nil},
		{"of two equally fast, the idler", []ep{{ewma: time.Millisecond, inflight: 5}, {ewma: time.Millisecond}}, 0, usableExcept(), []int{1}, nil},
		{"queue depth outweighs a small latency edge", []ep{{ewma: time.Millisecond, inflight: 9}, {ewma: 2 * time.Millisecond}}, 0, usableExcept(), []int{1}, nil},
		{"an unobserved endpoint is tried", []ep{{ewma: time.Millisecond}, {}}, 0, usableExcept(), []int{1}, nil},
		{"the faster was tried: the other", []ep{{ewma: 50 * time.Millisecond}, {ewma: time.Millisecond}}, mask(1), usableExcept(), []int{0}, nil},
		{"the faster is down: the other", []ep{{ewma: 50 * time.Millisecond}, {ewma: time.Millisecond}}, 0, usableExcept(1), []int{0}, nil},
		{"all down: still the cheaper", []ep{{ewma: 50 * time.Millisecond}, {ewma: time.Millisecond}}, 0, usableExcept(0, 1), []int{1}, nil},
		{"the slowest of three is never picked",
			[]ep{{ewma: time.Millisecond}, {ewma: time.Second}, {ewma: 2 * time.Millisecond}}, 0, usableExcept(), []int{0, 2}, []int{1}},
		{"the slowest of three is never picked, first in the list",
			[]ep{{ewma: 3 * time.Millisecond}, {ewma: time.Millisecond}, {ewma: 2 * time.Millisecond}}, 0, usableExcept(), []int{0, 1, 2}, []int{0}},
		{"down and tried excluded among five",
			[]ep{{}, {}, {}, {}, {}}, mask(0, 4), usableExcept(2), []int{1, 3}, nil},
	}
	const trials = 500
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eps := make([]*endpoint, len(tc.eps))
			for i, e := range tc.eps {
				eps[i] = &endpoint{addr: "ep", ewma: float64(e.ewma)}
				eps[i].inflight.Store(e.inflight)
			}
			counts := map[int]int{}
			for range trials {
				i := (p2cEWMA{}).pick(eps, tc.tried, tc.usable)
				if !slices.Contains(tc.allowed, i) {
					t.Fatalf("picked %d, want one of %v", i, tc.allowed)
				}
				counts[i]++
			}
			for _, i := range tc.never {
				if counts[i] > 0 {
					t.Fatalf("picked %d %d times, want never (%v)", i, counts[i], counts)
				}
			}
		})
	}
}

// TestP2CEWMASpreadsEqualEndpoints: with equal costs the random choice
// must reach every candidate (a broken draw would always pick the same).
func TestP2CEWMASpreadsEqualEndpoints(t *testing.T) {
	eps := makeEndpoints(4)
	counts := make([]int, len(eps))
	for range 2000 {
		counts[(p2cEWMA{}).pick(eps, mask(3), usableExcept())]++
	}
	if counts[3] != 0 {
		t.Fatalf("tried endpoint picked: %v", counts)
	}
	for i := range 3 {
		// Each of three gets 1/3 on average; 200 of 2000 is far below.
		if counts[i] < 200 {
			t.Fatalf("endpoint %d picked %d of 2000 times: %v", i, counts[i], counts)
		}
	}
}

func TestEndpointObserve(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(f float64) float64 { return f * float64(time.Millisecond) }
	type obs struct {
		at  time.Duration // after t0
		rtt time.Duration
	}
	cases := []struct {
		name string
		obs  []obs
		want float64 // ewma in ns
	}{
		{"first sample is the average", []obs{{0, 40 * time.Millisecond}}, ms(40)},
		{"a higher sample replaces it at once (peak)", []obs{{0, 10 * time.Millisecond}, {time.Millisecond, 80 * time.Millisecond}}, ms(80)},
		{"a lower sample after one decay period weighs 1-1/e",
			[]obs{{0, 100 * time.Millisecond}, {ewmaDecay, 0}}, ms(100) / math.E},
		{"a lower sample at once barely moves it",
			[]obs{{0, 100 * time.Millisecond}, {0, 0}}, ms(100)},
		{"a lower sample long after replaces it almost fully",
			[]obs{{0, 100 * time.Millisecond}, {100 * ewmaDecay, 10 * time.Millisecond}}, ms(10) + ms(90)*math.Exp(-100)},
		{"decay is measured from the last sample",
			[]obs{{0, 100 * time.Millisecond}, {ewmaDecay, 100 * time.Millisecond}, {2 * ewmaDecay, 0}}, ms(100) / math.E},
		{"half a period",
			[]obs{{0, 60 * time.Millisecond}, {ewmaDecay / 2, 20 * time.Millisecond}},
			ms(60)*math.Exp(-0.5) + ms(20)*(1-math.Exp(-0.5))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := &endpoint{addr: "ep"}
			for _, o := range tc.obs {
				e.observe(t0.Add(o.at), o.rtt)
			}
			if math.Abs(e.ewma-tc.want) > 1 { // within a nanosecond
				t.Fatalf("ewma = %.1fns, want %.1fns", e.ewma, tc.want)
			}
		})
	}
}

func TestEndpointMarkDown(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		op       string // "down" (markDown) or "ok" (observe)
		at       time.Duration
		downFor  time.Duration // after a "down": down until at+downFor
		wantDown bool          // for "ok": whether it is down right after
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"first failure: base period", []step{{op: "down", downFor: downBase}}},
		{"consecutive failures double", []step{
			{op: "down", at: 0, downFor: downBase},
			{op: "down", at: time.Second, downFor: 2 * downBase},
			{op: "down", at: 2 * time.Second, downFor: 4 * downBase},
			{op: "down", at: 3 * time.Second, downFor: 8 * downBase},
		}},
		{"the period is capped", func() []step {
			var s []step
			d := downBase
			for i := range 14 {
				s = append(s, step{op: "down", at: time.Duration(i) * time.Minute, downFor: min(d, downMax)})
				d *= 2
			}
			return s
		}()},
		{"a success resets the backoff and the mark", []step{
			{op: "down", at: 0, downFor: downBase},
			{op: "down", at: time.Second, downFor: 2 * downBase},
			{op: "ok", at: 1100 * time.Millisecond, wantDown: false},
			{op: "down", at: 2 * time.Second, downFor: downBase},
		}},
		{"failure while down extends from now", []step{
			{op: "down", at: 0, downFor: downBase},
			{op: "down", at: 100 * time.Millisecond, downFor: 2 * downBase},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := &endpoint{addr: "ep"}
			if e.isDown(t0) {
				t.Fatal("a new endpoint is down")
			}
			for i, s := range tc.steps {
				now := t0.Add(s.at)
				switch s.op {
				case "down":
					e.markDown(now)
					until := now.Add(s.downFor)
					if !e.isDown(now) || !e.isDown(until.Add(-time.Nanosecond)) {
						t.Fatalf("step %d: not down before %v", i, s.downFor)
					}
					if e.isDown(until) {
						t.Fatalf("step %d: still down after %v", i, s.downFor)
					}
				case "ok":
					e.observe(now, time.Millisecond)
					if e.isDown(now) != s.wantDown {
						t.Fatalf("step %d: isDown = %v after a success", i, !s.wantDown)
					}
				}
			}
		})
	}
}

// TestUpstreamPickSkipsDownEndpoints ties the pieces together: an endpoint
// marked down is not picked until its period ends (explicit clock).
func TestUpstreamPickSkipsDownEndpoints(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	for _, bal := range []balancer{&roundRobin{}, p2cEWMA{}} {
		u := &upstream{eps: makeEndpoints(2), bal: bal, now: func() time.Time { return now }}
		now = t0
		u.eps[0].markDown(now)
		for range 20 {
			if i := u.pickHTTP(0); i != 1 {
				t.Fatalf("%T: picked %d while endpoint 0 is down", bal, i)
			}
		}
		if i := u.pickHTTP(mask(1)); i != 0 {
			t.Fatalf("%T: with 1 tried, picked %d, want the down one (0)", bal, i)
		}
		now = t0.Add(downBase)
		seen := map[int]bool{}
		for range 50 {
			seen[u.pickHTTP(0)] = true
		}
		if !seen[0] {
			t.Fatalf("%T: endpoint 0 never picked after its down period", bal)
		}
	}
}

// TestAttemptBody covers the request-body tracker that RoundTrip shares
// between attempts (it lives next to the balancers' tests because the
// endpoint choice and the retry it enables go together). An attempt closed
// before its first Read must fail that Read at once, whether or not the
// body is pumped, yet leave the body to the next attempt; the HTTP/2
// transport does exactly that when an upstream connection dies.
func TestAttemptBody(t *testing.T) {
	readWithin := func(t *testing.T, r io.Reader) (string, error) {
		t.Helper()
		type result struct {
			s   string
			err error
		}
		res := make(chan result, 1)
		go func() {
			buf := make([]byte, 16)
			n, err := r.Read(buf)
			res <- result{string(buf[:n]), err}
		}()
		select {
		case r := <-res:
			return r.s, r.err
		case <-time.After(10 * time.Second):
			t.Fatal("Read still blocked")
			return "", nil
		}
	}
	for _, detach := range []bool{false, true} {
		name := "direct"
		if detach {
			name = "pumped"
		}
		t.Run(name+"/closed before the first read, then the next attempt", func(t *testing.T) {
			pr, pw := io.Pipe()
			defer pw.Close()
			s := newSentTracker(pr, detach)
			first := s.attempt()
			first.Close()
			if _, err := readWithin(t, first); !errors.Is(err, errBodyAbandoned) {
				t.Fatalf("read after close: %v, want errBodyAbandoned", err)
			}
			if s.read.Load() {
				t.Fatal("a read refused before anything was read marks the body as read")
			}
			go pw.Write([]byte("hello"))
			next := s.attempt()
			defer next.Close() // as the transport does when it is done with a body
			if got, err := readWithin(t, next); got != "hello" || err != nil {
				t.Fatalf("next attempt read %q, %v", got, err)
			}
		})
	}
	t.Run("pumped/closed while the read waits for the client", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		a := newSentTracker(pr, true).attempt()
		res := make(chan error, 1)
		go func() {
			_, err := a.Read(make([]byte, 8))
			res <- err
		}()
		// Whether Close lands before or during the Read, the Read ends.
		a.Close()
		select {
		case err := <-res:
			if !errors.Is(err, errBodyAbandoned) {
				t.Fatalf("read: %v, want errBodyAbandoned", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Read still blocked after the attempt was closed")
		}
	})
	t.Run("pumped/closed between the check and the wait", func(t *testing.T) {
		pr, pw := io.Pipe()
		defer pw.Close()
		s := newSentTracker(pr, true)
		done := make(chan struct{})
		close(done)
		if _, err := readWithin(t, readerFunc(func(p []byte) (int, error) { return s.readFor(p, done) })); !errors.Is(err, errBodyAbandoned) {
			t.Fatalf("read: %v, want errBodyAbandoned", err)
		}
		// The pump started; closing the client side must let it end
		// (goleak checks at the end of the package's tests).
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// TestP2CEWMAForgivesIdleEndpoints: an endpoint avoided after one slow
// answer gets no traffic, so no sample lowers its average; the average
// must decay with time alone, or the endpoint is never tried again
// (TestDNSDiscovery once saw one address stuck at 17 calls for 10 s while
// the others had 2,400).
func TestP2CEWMAForgivesIdleEndpoints(t *testing.T) {
	t0 := time.Unix(1000, 0)
	cases := []struct {
		name  string
		after time.Duration // since the slow answer
		want  int           // the endpoint picked
	}{
		{"just after the slow answer the fast one wins", time.Second, 1},
		{"80 s later the slow answer is forgiven", 80 * time.Second, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eps := makeEndpoints(2)
			eps[0].observe(t0, 3*time.Second) // one slow answer, then nothing
			now := t0.Add(tc.after)
			// The other keeps answering in 10 ms, up to now.
			eps[1].observe(now.Add(-time.Millisecond), 10*time.Millisecond)
			b := p2cEWMA{now: func() time.Time { return now }}
			for range 20 {
				if got := b.pick(eps, 0, usableExcept()); got != tc.want {
					t.Fatalf("picked %d, want %d (costs %.0f, %.0f)", got, tc.want, eps[0].cost(now), eps[1].cost(now))
				}
			}
		})
	}
}
