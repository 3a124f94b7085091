package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/conversation"
)

// sessionsServer serves a tracker holding three ended sessions (completed
// and good; abandoned after a green KB fallback; abandoned after a 500)
// and one active one.
func sessionsServer(t *testing.T) (*Server, time.Time) {
	now := t0
	tr, err := conversation.New(conversation.Options{
		Config: &conversation.Config{EntryRoutes: []string{"chat"}},
		Now:    func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	obs := func(id, code, hop string, n uint64) {
		// Texts differ (no repeats) and must never come back.
		text := []string{"", "hello there parcel bot", "what is my parcel balance", "when does the parcel shop open",
			"my parcel card was declined", "thanks for the parcel help"}[n]
		tr.Observe(conversation.Turn{Route: "chat", SessionID: id, Start: now, Duration: ms(120), Code: code, HopOutcome: hop,
			TraceID: tid(n), Text: text,
			Hops: []conversation.Hop{{Name: "chat", Outcome: "ok"}, {Name: "kb-search", Outcome: hop, Depth: 1}}})
		now = now.Add(time.Second)
	}
	obs("good", "200", "ok", 1)
	obs("green-bad", "200", "ok", 2)
	obs("green-bad", "200", "fallback", 3)
	obs("red-bad", "500", "error", 4)
	now = now.Add(conversation.DefaultIdleTimeout)
	obs("live", "200", "ok", 5)
	return New(Options{Sessions: tr, Now: func() time.Time { return now }}), now
}

func getSessions(t *testing.T, s *Server, url string, v any) int {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", url, nil))
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: content type %q", url, ct)
	}
	if strings.Contains(rec.Body.String(), "parcel") {
		t.Errorf("%s: user text in the answer", url)
	}
	if v != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
			t.Fatalf("%s: %v: %s", url, err, rec.Body)
		}
	}
	return rec.Code
}

func TestAPISessions(t *testing.T) {
	s, _ := sessionsServer(t)
	cases := []struct {
		url  string
		code int
		ids  string
	}{
		{"/api/sessions", 200, "red-bad,green-bad,good,live"},
		{"/api/sessions?outcome=abandoned", 200, "red-bad,green-bad"},
		{"/api/sessions?outcome=active", 200, "live"},
		{"/api/sessions?good=true", 200, "good"},
		{"/api/sessions?good=false", 200, "red-bad,green-bad"},
		{"/api/sessions?green=true", 200, "green-bad"},
		{"/api/sessions?signal=repeat", 200, ""},
		{"/api/sessions?since=" + t0.Add(1500*time.Millisecond).Format(time.RFC3339Nano), 200, "red-bad,green-bad,live"},
		{"/api/sessions?since=1m", 200, "live"},
		{"/api/sessions?limit=1", 200, "red-bad"},
		{"/api/sessions?outcome=happy", 400, ""},
		{"/api/sessions?good=maybe", 400, ""},
		{"/api/sessions?green=1x", 400, ""},
		{"/api/sessions?signal=anger", 400, ""},
		{"/api/sessions?since=yesterday", 400, ""},
		{"/api/sessions?limit=0", 400, ""},
		{"/api/sessions?limit=100000", 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			var body struct {
				Sessions []sessionJSON `json:"sessions"`
				Active   int           `json:"active"`
				Error    string        `json:"error"`
			}
			if code := getSessions(t, s, tc.url, &body); code != tc.code {
				t.Fatalf("status %d, want %d (%s)", code, tc.code, body.Error)
			}
			if tc.code != 200 {
				if body.Error == "" {
					t.Error("no error message")
				}
				return
			}
			var ids []string
			for _, x := range body.Sessions {
				ids = append(ids, x.ID)
			}
			if got := strings.Join(ids, ","); got != tc.ids {
				t.Errorf("sessions %s, want %s", got, tc.ids)
			}
			if body.Active != 1 {
				t.Errorf("active %d, want 1", body.Active)
			}
		})
	}
}

func TestAPISession(t *testing.T) {
	s, _ := sessionsServer(t)
	var d sessionJSON
	if code := getSessions(t, s, "/api/sessions/green-bad", &d); code != 200 {
		t.Fatalf("status %d", code)
	}
	if d.Outcome != conversation.SessionAbandoned || d.Good || !d.Green || d.Turns != 2 || d.BadTurns != 1 || d.Active || d.Ended == nil {
		t.Errorf("session %+v", d)
	}
	if len(d.TurnLog) != 2 || d.TurnLog[1].Outcome != conversation.TurnFallback || d.TurnLog[1].Blame != "kb-search" ||
		d.TurnLog[1].TraceID != tid(3).String() || d.TurnLog[1].Latency != 0.12 || d.TurnLog[0].Signals == nil {
		t.Errorf("turns %+v", d.TurnLog)
	}
	if d.LastBad == nil || d.LastBad.Index != 2 || d.LastTraceID != tid(3).String() {
		t.Errorf("last bad %+v, last trace %v", d.LastBad, d.LastTraceID)
	}
	var live sessionJSON
	if getSessions(t, s, "/api/sessions/live", &live); !live.Active || live.Outcome != conversation.SessionActive || live.Ended != nil {
		t.Errorf("live session %+v", live)
	}
	var e apiError
	if code := getSessions(t, s, "/api/sessions/nope", &e); code != 404 || !strings.Contains(e.Error, "not found") {
		t.Errorf("unknown session: %d %q", code, e.Error)
	}
}

func TestAPISLI(t *testing.T) {
	s, _ := sessionsServer(t)
	var body struct {
		Window  float64                 `json:"window"`
		Step    float64                 `json:"step"`
		TurnSLO float64                 `json:"turn_slo"`
		Total   conversation.SLIPoint   `json:"total"`
		Points  []conversation.SLIPoint `json:"points"`
	}
	if code := getSessions(t, s, "/api/sli?window=30m&step=5m", &body); code != 200 {
		t.Fatalf("status %d", code)
	}
	if body.Window != 1800 || body.Step != 300 || body.TurnSLO != 2 || len(body.Points) != 6 {
		t.Errorf("window %v step %v slo %v, %d points", body.Window, body.Step, body.TurnSLO, len(body.Points))
	}
	if tot := body.Total; tot.Sessions != 3 || tot.Good != 1 || tot.Turns != 5 || tot.Errors != 1 || tot.P95 == nil {
		t.Errorf("total %+v", tot)
	}
	for _, url := range []string{"/api/sli?window=4h", "/api/sli?step=90s", "/api/sli?window=5m&step=10m", "/api/sli?window=-1m"} {
		if code := getSessions(t, s, url, nil); code != 400 {
			t.Errorf("%s: status %d, want 400", url, code)
		}
	}
}

func TestAPISessionsOff(t *testing.T) {
	s := New(Options{})
	for _, url := range []string{"/api/sessions", "/api/sessions/x", "/api/sli"} {
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", url, nil))
		if rec.Code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404 (the dashboard reads it as not available)", url, rec.Code)
		}
	}
}
