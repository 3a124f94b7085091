package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Persona is how a simulated user reacts to a bad answer. These reactions
// are the conversation-level signals hopwatch looks for: a repeated
// question, an abandoned session.
type Persona string

const (
	// Patient users carry on whatever happens.
	Patient Persona = "patient"
	// Repeaters ask the same question again, once, after a slow, degraded
	// or failed answer.
	Repeater Persona = "repeater"
	// Quitters leave the conversation right after a slow or failed answer,
	// or one the bot did not understand, without a goodbye.
	Quitter Persona = "quitter"
)

// Mix weighs the personas: each conversation draws one in proportion.
// The zero Mix means DefaultMix.
type Mix struct {
	Patient, Repeater, Quitter float64
}

// DefaultMix is half patient users, the rest split between repeating and
// giving up.
var DefaultMix = Mix{Patient: 0.5, Repeater: 0.3, Quitter: 0.2}

// UsersConfig sets up simulated users.
type UsersConfig struct {
	// URL is hopwatch's http listener, e.g. http://127.0.0.1:7080; users
	// call the gateway's /v1/chat there.
	URL string
	// Users is how many conversations run at once (0: 8).
	Users int
	// Rate is turns per second across all users (0: unpaced, each user
	// asks again as soon as answered).
	Rate float64
	// MinTurns and MaxTurns bound a conversation's length, repeats not
	// counted (0: 3 and 6).
	MinTurns, MaxTurns int
	Mix                Mix
	// SlowAfter is how long an answer may take before the user finds it
	// slow (0: 1s).
	SlowAfter time.Duration
	// StreamShare is the share of turns (0..1) that use the SSE endpoint.
	StreamShare float64
	// Conversations bounds how many conversations each user has (0: until
	// ctx ends).
	Conversations int
	// CloseShare is the share (0..1) of conversations that, once the user
	// has had their questions answered, end with a goodbye ("thanks,
	// bye"), which the bot's DM marks resolved. The others end silently.
	// Quitters who give up never say goodbye.
	CloseShare float64

	// Client sends the requests (nil: one of RunUsers's own, closed at the
	// end).
	Client *http.Client
	// Rand draws personas, lengths, questions (nil: randomly seeded). Each
	// user gets its own generator seeded from it before any starts, so a
	// seeded run makes the same choices per user.
	Rand *rand.Rand
	// Now is the clock that turn latencies are measured on (nil: time.Now).
	Now func() time.Time
	// OnTurn, if set, sees every turn after it is recorded.
	OnTurn func(Turn)
}

func (c *UsersConfig) setDefaults() error {
	if c.URL == "" {
		return errors.New("demo: users need the URL of hopwatch's http listener")
	}
	c.URL = strings.TrimSuffix(c.URL, "/")
	if c.Users <= 0 {
		c.Users = 8
	}
	if c.MinTurns <= 0 {
		c.MinTurns = 3
	}
	if c.MaxTurns <= 0 {
		c.MaxTurns = max(6, c.MinTurns)
	}
	if c.MaxTurns < c.MinTurns {
		return fmt.Errorf("demo: MaxTurns %d < MinTurns %d", c.MaxTurns, c.MinTurns)
	}
	if c.Mix.Patient < 0 || c.Mix.Repeater < 0 || c.Mix.Quitter < 0 {
		return errors.New("demo: mix weights must not be negative")
	}
	if c.Mix == (Mix{}) {
		c.Mix = DefaultMix
	}
	if c.SlowAfter <= 0 {
		c.SlowAfter = time.Second
	}
	if c.Rate < 0 {
		return errors.New("demo: rate must not be negative")
	}
	if c.CloseShare < 0 || c.CloseShare > 1 {
		return errors.New("demo: close share must be between 0 and 1")
	}
	if c.Rand == nil {
		c.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// RunUsers runs simulated users against the gateway behind hopwatch and
// records every turn in rec. It returns when ctx ends (turns in flight are
// canceled) or when every user has had its Conversations; all its
// goroutines have ended by then.
func RunUsers(ctx context.Context, cfg UsersConfig, rec *Recorder) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if cfg.Client == nil {
		tr := &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: cfg.Users,
			IdleConnTimeout:     90 * time.Second,
		}
		defer tr.CloseIdleConnections()
		cfg.Client = &http.Client{Transport: tr}
	}
	var p *pacer
	if cfg.Rate > 0 {
		p = &pacer{every: time.Duration(float64(time.Second) / cfg.Rate)}
	}
	var wg sync.WaitGroup
	for i := range cfg.Users {
		u := &user{
			id:  i,
			cfg: &cfg,
			rec: rec,
			p:   p,
			rnd: rand.New(rand.NewPCG(cfg.Rand.Uint64(), cfg.Rand.Uint64())),
		}
		wg.Go(func() { u.run(ctx) })
	}
	wg.Wait()
	return nil
}

// pacer hands out turn start times evenly spaced across all users. It
// gives no credit for idle time: after a lull the next turn starts now,
// not a burst of the turns that were "owed".
type pacer struct {
	every time.Duration
	mu    sync.Mutex // guards next
	next  time.Time
}

func (p *pacer) wait(ctx context.Context) error {
	if p == nil {
		return ctx.Err()
	}
	p.mu.Lock()
	slot := time.Now()
	if p.next.After(slot) {
		slot = p.next
	}
	p.next = slot.Add(p.every)
	p.mu.Unlock()
	return sleep(ctx, time.Until(slot))
}

// questions are what users ask, by topic. A repeat sends the identical
// text, which is what repeat detection keys on; any two different
// questions are far apart for hopwatch's repeat detection (a test checks),
// so the only repeats on the wire are the users' own.
var questions = [][]string{
	{"where is my order?", "has my parcel shipped yet?", "my order 4711 has not arrived"},
	{"when are you open?", "are you open on sunday?", "what are your opening hours today?"},
	{"how do I return a jacket?", "can I return an item without the receipt?"},
	{"how much is delivery?", "is shipping free over 50 euros?"},
	{"I forgot my password", "how do I change the email on my account?"},
}

// user is one simulated user, having one conversation after another.
type user struct {
	id  int
	cfg *UsersConfig
	rec *Recorder
	p   *pacer
	rnd *rand.Rand // this user's own: not shared, so no lock
}

func (u *user) run(ctx context.Context) {
	for n := 0; u.cfg.Conversations == 0 || n < u.cfg.Conversations; n++ {
		if ctx.Err() != nil {
			return
		}
		u.converse(ctx, n)
	}
}

// RepeatWindow is how many of a conversation's previous messages a new
// one is compared with to call it a repeat: hopwatch's default
// repeat.last, so that the simulation counts repeats as hopwatch does.
const RepeatWindow = 3

// conversation is one conversation's state: what the user said last, and
// its Ending so far.
type conversation struct {
	session string
	persona Persona
	recent  []string // the last RepeatWindow messages, oldest first
	end     Ending
}

// converse runs one conversation. It ends after its turns (with a goodbye
// on a CloseShare of them), when a quitter gets a bad answer, or
// uncounted when ctx ends.
func (u *user) converse(ctx context.Context, n int) {
	c := &conversation{session: fmt.Sprintf("u%d-c%d-%08x", u.id, n, u.rnd.Uint32()), persona: u.persona()}
	turns := u.cfg.MinTurns + u.rnd.IntN(u.cfg.MaxTurns-u.cfg.MinTurns+1)
	q := u.question(c.recent)
	repeat := false
	for done := 0; done < turns; {
		t, ok := u.turn(ctx, c, q, false)
		if !ok {
			return
		}
		bad := t.Slow || t.Outcome == OutcomeError || t.Verdict == VerdictNoMatch
		switch {
		case c.persona == Quitter && bad:
			c.end.GaveUp = true
			u.rec.EndConversation(c.end)
			return
		case c.persona == Repeater && !repeat && (bad || t.Outcome == OutcomeDegraded):
			repeat = true // the same question again; once, or a broken bot would loop it
			continue
		}
		repeat = false
		done++
		q = u.question(c.recent)
	}
	if u.cfg.CloseShare > 0 && u.rnd.Float64() < u.cfg.CloseShare {
		t, ok := u.turn(ctx, c, closings[u.rnd.IntN(len(closings))], true)
		if !ok {
			return
		}
		c.end.Resolved = t.Verdict == VerdictResolved
	}
	u.rec.EndConversation(c.end)
}

// turn asks text, records the turn and updates the conversation's Ending;
// false when the run ended during it.
func (u *user) turn(ctx context.Context, c *conversation, text string, closing bool) (Turn, bool) {
	if err := u.p.wait(ctx); err != nil {
		return Turn{}, false
	}
	t := u.ask(ctx, c.session, text, u.rnd.Float64() < u.cfg.StreamShare)
	t.User, t.Persona, t.Closing = u.id, c.persona, closing
	t.Repeat = slices.Contains(c.recent, text)
	u.rec.Record(t)
	if u.cfg.OnTurn != nil {
		u.cfg.OnTurn(t)
	}
	if t.Outcome == OutcomeCanceled {
		return t, false
	}
	if t.Repeat {
		c.end.Repeats++
	}
	c.end.LastBad = t.Repeat || t.Slow || t.Outcome != OutcomeOK || t.Verdict == VerdictNoMatch
	c.recent = append(c.recent, text)
	if len(c.recent) > RepeatWindow {
		c.recent = c.recent[1:]
	}
	return t, true
}

func (u *user) persona() Persona {
	m := u.cfg.Mix
	x := u.rnd.Float64() * (m.Patient + m.Repeater + m.Quitter)
	switch {
	case x < m.Patient:
		return Patient
	case x < m.Patient+m.Repeater:
		return Repeater
	}
	return Quitter
}

// question draws a new question, none of the recent ones: asking one of
// them again by chance would be a repeat the user did not mean.
func (u *user) question(recent []string) string {
	for {
		topic := questions[u.rnd.IntN(len(questions))]
		if q := topic[u.rnd.IntN(len(topic))]; !slices.Contains(recent, q) {
			return q
		}
	}
}

// Questions returns every question users ask, and Closings their goodbyes.
func Questions() []string { return slices.Concat(questions...) }

// Closings returns what users say to end a conversation.
func Closings() []string { return slices.Clone(closings) }

// ask sends one turn and waits for the whole answer.
func (u *user) ask(ctx context.Context, session, text string, stream bool) Turn {
	t := Turn{Session: session, Stream: stream, Text: text}
	path := ChatPath
	if stream {
		path = ChatStreamPath
	}
	body, _ := json.Marshal(ChatRequest{SessionID: session, Text: text})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.cfg.URL+path, bytes.NewReader(body))
	if err != nil {
		return u.failed(ctx, t, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderCaller, "client")
	req.Header.Set(HeaderSession, session)
	if stream {
		req.Header.Set("Accept", "text/event-stream")
	}

	start := u.cfg.Now()
	res, err := u.cfg.Client.Do(req)
	if err != nil {
		return u.failed(ctx, t, err)
	}
	defer res.Body.Close()
	var (
		degraded bool
		verdict  string
	)
	switch {
	case res.StatusCode != http.StatusOK:
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		err = fmt.Errorf("%s: %s", res.Status, bytes.TrimSpace(msg))
	case stream:
		degraded, verdict, err = readStream(res.Body, func() {
			t.FirstToken = u.cfg.Now().Sub(start)
		})
	default:
		var cr ChatResponse
		if err = json.NewDecoder(io.LimitReader(res.Body, maxBody)).Decode(&cr); err == nil && cr.Reply == "" {
			err = errors.New("empty reply")
		}
		degraded, verdict = cr.Degraded, cr.Outcome
	}
	t.Latency = u.cfg.Now().Sub(start)
	// A stream is slow when its first token is late: that is what the user
	// waits for, and what hopwatch holds its turn SLO against.
	t.Slow = t.Latency > u.cfg.SlowAfter
	if t.FirstToken > 0 {
		t.Slow = t.FirstToken > u.cfg.SlowAfter
	}
	if err != nil {
		return u.failed(ctx, t, err)
	}
	t.Outcome, t.Verdict = OutcomeOK, verdict
	if degraded {
		t.Outcome = OutcomeDegraded
	}
	return t
}

// failed ends a turn that got no answer: an error, unless the run is
// ending, which is nobody's failure.
func (u *user) failed(ctx context.Context, t Turn, err error) Turn {
	t.Outcome, t.Err = OutcomeError, err
	if ctx.Err() != nil {
		t.Outcome = OutcomeCanceled
	}
	return t
}

// readStream reads the gateway's SSE answer; first is called on the first
// token. A stream that ends without "done" is a failed turn: the user saw
// half a reply.
func readStream(r io.Reader, first func()) (degraded bool, verdict string, err error) {
	tokens, done := 0, false
	err = readEvents(r, func(name, data string) error {
		switch name {
		case eventToken:
			if tokens == 0 {
				first()
			}
			tokens++
		case eventDone:
			var d doneEvent
			if err := json.Unmarshal([]byte(data), &d); err != nil {
				return fmt.Errorf("bad done event: %w", err)
			}
			degraded, verdict, done = d.Degraded, d.Outcome, true
		case eventError:
			var e errorEvent
			json.Unmarshal([]byte(data), &e)
			return fmt.Errorf("stream failed: %s", e.Error)
		}
		return nil
	})
	switch {
	case err != nil:
		return false, "", err
	case !done:
		return false, "", errors.New("stream ended without a done event")
	case tokens == 0:
		return false, "", errors.New("empty reply")
	}
	return degraded, verdict, nil
}
