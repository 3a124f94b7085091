package demo_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/demo"
)

// fakeClock is advanced by the fake gateway, so that "slow" answers cost
// no real time and the users' decisions are deterministic.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// answer is how the fake gateway answers one turn.
type answer struct {
	took     time.Duration
	degraded bool
	status   int    // 0: 200
	verdict  string // the bot's outcome in the answer
}

var (
	fast     = answer{took: 300 * time.Millisecond}
	slow     = answer{took: 2500 * time.Millisecond}
	degraded = answer{took: 300 * time.Millisecond, degraded: true}
	failed   = answer{took: 50 * time.Millisecond, status: http.StatusBadGateway}
	noMatch  = answer{took: 300 * time.Millisecond, verdict: demo.VerdictNoMatch}
	bye      = answer{took: 200 * time.Millisecond, verdict: demo.VerdictResolved}
)

// fakeGateway answers the n-th request (across the run) with script[n],
// and fast after the script ends. It speaks both the JSON and the SSE
// variant, as the real gateway does.
func fakeGateway(t *testing.T, clock *fakeClock, script []answer) *httptest.Server {
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get(demo.HeaderCaller); got != "client" {
			t.Errorf("x-hop-caller %q, want client", got)
		}
		var req demo.ChatRequest
		json.NewDecoder(r.Body).Decode(&req)
		if r.Header.Get(demo.HeaderSession) == "" || r.Header.Get(demo.HeaderSession) != req.SessionID {
			t.Errorf("session header %q, body %q", r.Header.Get(demo.HeaderSession), req.SessionID)
		}
		mu.Lock()
		a := fast
		if n < len(script) {
			a = script[n]
		}
		n++
		mu.Unlock()
		clock.Advance(a.took)
		if a.status != 0 {
			http.Error(w, "upstream failed", a.status)
			return
		}
		if r.URL.Path == demo.ChatStreamPath {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "event: token\ndata: {\"text\":\"hi\",\"index\":0}\n\n")
			fmt.Fprintf(w, "event: done\ndata: {\"degraded\":%t,\"outcome\":%q}\n\n", a.degraded, a.verdict)
			return
		}
		json.NewEncoder(w).Encode(demo.ChatResponse{Reply: "hi", Degraded: a.degraded, Outcome: a.verdict})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestUsersReact checks how each persona reacts to slow, degraded and
// failed answers, with one user having one conversation of three
// questions.
func TestUsersReact(t *testing.T) {
	type want struct {
		repeats   []bool // per turn: was it a repeat?
		abandoned int
		completed int
		errors    int
		slow      int
		// outcome is the session outcome by hopwatch's rules ("":
		// completed).
		outcome string
	}
	tests := []struct {
		name   string
		mix    demo.Mix
		stream bool
		close  float64
		script []answer
		want   want
	}{
		{
			name:   "patient carries on after slow answers",
			mix:    demo.Mix{Patient: 1},
			script: []answer{slow, slow, slow},
			// Satisfied, gone without a word after a slow answer: on the
			// wire that is an abandoned session.
			want: want{repeats: []bool{false, false, false}, completed: 1, slow: 3, outcome: "abandoned"},
		},
		{
			name:   "patient closes with a goodbye the DM resolves",
			mix:    demo.Mix{Patient: 1},
			close:  1,
			script: []answer{slow, fast, slow, bye},
			want:   want{repeats: []bool{false, false, false, false}, completed: 1, slow: 2, outcome: "resolved"},
		},
		{
			name:   "a goodbye that fails leaves the session abandoned",
			mix:    demo.Mix{Patient: 1},
			close:  1,
			script: []answer{fast, fast, fast, failed},
			want:   want{repeats: []bool{false, false, false, false}, completed: 1, errors: 1, outcome: "abandoned"},
		},
		{
			name:   "quitter gives up when the bot does not understand",
			mix:    demo.Mix{Quitter: 1},
			close:  1,
			script: []answer{fast, noMatch},
			want:   want{repeats: []bool{false, false}, abandoned: 1, outcome: "abandoned"},
		},
		{
			name:   "repeater rephrases after no_match and closes",
			mix:    demo.Mix{Repeater: 1},
			close:  1,
			script: []answer{noMatch, fast, fast, fast, bye},
			want:   want{repeats: []bool{false, true, false, false, false}, completed: 1, outcome: "resolved"},
		},
		{
			name:   "two repeats make a frustrated session",
			mix:    demo.Mix{Repeater: 1},
			script: []answer{slow, fast, noMatch, fast, fast},
			want:   want{repeats: []bool{false, true, false, true, false}, completed: 1, slow: 1, outcome: "frustrated"},
		},
		{
			name:   "repeater asks again after a slow answer",
			mix:    demo.Mix{Repeater: 1},
			script: []answer{slow, fast, fast, fast},
			want:   want{repeats: []bool{false, true, false, false}, completed: 1, slow: 1},
		},
		{
			name:   "a repeat as the last turn is abandoned",
			mix:    demo.Mix{Repeater: 1},
			script: []answer{fast, fast, slow, fast},
			want:   want{repeats: []bool{false, false, false, true}, completed: 1, slow: 1, outcome: "abandoned"},
		},
		{
			name:   "repeater asks again after a degraded answer",
			mix:    demo.Mix{Repeater: 1},
			script: []answer{fast, degraded, fast, fast},
			want:   want{repeats: []bool{false, false, true, false}, completed: 1},
		},
		{
			name:   "repeater asks again after an error",
			mix:    demo.Mix{Repeater: 1},
			script: []answer{failed, fast, fast, fast},
			want:   want{repeats: []bool{false, true, false, false}, completed: 1, errors: 1},
		},
		{
			name:   "repeater repeats each question once only",
			mix:    demo.Mix{Repeater: 1},
			script: []answer{slow, slow, slow, slow, slow, slow},
			want:   want{repeats: []bool{false, true, false, true, false, true}, completed: 1, slow: 6, outcome: "abandoned"},
		},
		{
			name:   "quitter leaves after a slow answer",
			mix:    demo.Mix{Quitter: 1},
			script: []answer{fast, slow, fast},
			want:   want{repeats: []bool{false, false}, abandoned: 1, slow: 1, outcome: "abandoned"},
		},
		{
			name:   "quitter leaves after an error",
			mix:    demo.Mix{Quitter: 1},
			close:  1,
			script: []answer{failed},
			want:   want{repeats: []bool{false}, abandoned: 1, errors: 1, outcome: "abandoned"},
		},
		{
			name:   "quitter stays while answers are fast",
			mix:    demo.Mix{Quitter: 1},
			script: []answer{fast, degraded, fast},
			want:   want{repeats: []bool{false, false, false}, completed: 1},
		},
		{
			name:   "a slow stream is one whose first token is late",
			mix:    demo.Mix{Quitter: 1},
			stream: true,
			script: []answer{fast, fast, fast},
			want:   want{repeats: []bool{false, false, false}, completed: 1},
		},
		{
			name:   "streaming repeater asks again after a slow answer",
			mix:    demo.Mix{Repeater: 1},
			stream: true,
			script: []answer{slow, fast, fast, fast},
			want:   want{repeats: []bool{false, true, false, false}, completed: 1, slow: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
			gw := fakeGateway(t, clock, tt.script)
			rec := demo.NewRecorder(clock.Now)
			var turns []demo.Turn
			cfg := demo.UsersConfig{
				URL:           gw.URL,
				Users:         1,
				MinTurns:      3,
				MaxTurns:      3,
				Mix:           tt.mix,
				SlowAfter:     time.Second,
				Conversations: 1,
				Rand:          rand.New(rand.NewPCG(1, 2)),
				Now:           clock.Now,
				OnTurn:        func(t demo.Turn) { turns = append(turns, t) },
			}
			if tt.stream {
				cfg.StreamShare = 1
			}
			cfg.CloseShare = tt.close
			if err := demo.RunUsers(context.Background(), cfg, rec); err != nil {
				t.Fatal(err)
			}

			if len(turns) != len(tt.want.repeats) {
				t.Fatalf("%d turns, want %d: %+v", len(turns), len(tt.want.repeats), turns)
			}
			for i, turn := range turns {
				if turn.Repeat != tt.want.repeats[i] {
					t.Errorf("turn %d: Repeat %t, want %t", i, turn.Repeat, tt.want.repeats[i])
				}
				if turn.Repeat && turn.Text != turns[i-1].Text {
					t.Errorf("turn %d repeats %q but asks %q", i, turns[i-1].Text, turn.Text)
				}
				if turn.Session != turns[0].Session {
					t.Errorf("turn %d in session %s, want %s", i, turn.Session, turns[0].Session)
				}
				if turn.Stream != tt.stream {
					t.Errorf("turn %d: Stream %t", i, turn.Stream)
				}
				if turn.Stream && turn.Outcome != demo.OutcomeError && turn.FirstToken <= 0 {
					t.Errorf("turn %d: streamed without a first-token time", i)
				}
			}
			s := rec.Total()
			got := want{repeats: tt.want.repeats, abandoned: s.Abandoned, completed: s.Completed, errors: s.Errors, slow: s.Slow}
			if got.abandoned != tt.want.abandoned || got.completed != tt.want.completed ||
				got.errors != tt.want.errors || got.slow != tt.want.slow {
				t.Errorf("summary %+v, want %+v", got, tt.want)
			}
			wantOutcome := tt.want.outcome
			if wantOutcome == "" {
				wantOutcome = "completed"
			}
			sc := s.Sessions
			byOutcome := map[string]int{"resolved": sc.Resolved, "abandoned": sc.Abandoned, "frustrated": sc.Frustrated, "completed": sc.Completed}
			if sc.Ended != 1 || byOutcome[wantOutcome] != 1 {
				t.Errorf("sessions %+v, want one %s", sc, wantOutcome)
			}
			if sc.GaveUp != tt.want.abandoned || sc.GaveUp+sc.SilentAfterBad != sc.Abandoned {
				t.Errorf("sessions %+v: gave up %d, want %d", sc, sc.GaveUp, tt.want.abandoned)
			}
			nrep := 0
			for _, r := range tt.want.repeats {
				if r {
					nrep++
				}
			}
			if sc.Repeats != nrep || s.Repeats != nrep {
				t.Errorf("repeats: sessions %d, turns %d, want %d", sc.Repeats, s.Repeats, nrep)
			}
			if closing := turns[len(turns)-1].Closing; closing != (wantOutcome == "resolved" || tt.close > 0 && tt.want.abandoned == 0) {
				t.Errorf("last turn Closing %t", closing)
			}
			if s.Turns != len(turns) {
				t.Errorf("recorded %d turns, saw %d", s.Turns, len(turns))
			}
		})
	}
}

// TestUsersStopOnCancel: an unbounded run ends when its context does,
// with every goroutine gone (TestMain checks) and the cut turns not
// counted as errors.
func TestUsersStopOnCancel(t *testing.T) {
	arrived := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Reading the body to its end lets net/http watch the connection,
		// so the request context ends when the user hangs up.
		io.Copy(io.Discard, r.Body)
		once.Do(func() { close(arrived) })
		<-r.Context().Done() // never answers: every turn is in flight at cancel
	}))
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec := demo.NewRecorder(nil)
	done := make(chan error, 1)
	go func() {
		done <- demo.RunUsers(ctx, demo.UsersConfig{URL: srv.URL, Users: 4}, rec)
	}()
	<-arrived
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("RunUsers did not return after cancel")
	}
	if s := rec.Total(); s.Turns != 0 || s.Errors != 0 || s.Abandoned != 0 {
		t.Errorf("canceled turns were counted: %+v", s)
	}
}

func TestUsersConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  demo.UsersConfig
	}{
		{"no URL", demo.UsersConfig{}},
		{"negative rate", demo.UsersConfig{URL: "http://127.0.0.1:1", Rate: -1}},
		{"turns reversed", demo.UsersConfig{URL: "http://127.0.0.1:1", MinTurns: 5, MaxTurns: 2}},
		{"negative mix", demo.UsersConfig{URL: "http://127.0.0.1:1", Mix: demo.Mix{Patient: -1, Quitter: 2}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := demo.RunUsers(context.Background(), tt.cfg, demo.NewRecorder(nil)); err == nil {
				t.Error("no error")
			}
		})
	}
}
