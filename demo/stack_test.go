package demo_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/demo"
	"github.com/hopwatch/hopwatch/proxy"
)

// calls collects what OnCall reports.
type calls struct {
	mu   sync.Mutex
	list []demo.Call
}

func (c *calls) add(call demo.Call) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.list = append(c.list, call)
}

func (c *calls) byService() map[string][]demo.Call {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string][]demo.Call{}
	for _, call := range c.list {
		out[call.Service] = append(out[call.Service], call)
	}
	return out
}

// startBehindHopwatch runs the stack behind a real, in-process hopwatch
// configured from the demo's own file (listeners on port 0), and returns
// the base URL of hopwatch's http listener. Everything stops at cleanup.
func startBehindHopwatch(t *testing.T, cfg demo.Config) (*demo.Stack, string) {
	t.Helper()
	stack, err := demo.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hw, err := stack.HopwatchConfig(demo.Placement{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0", Admin: "127.0.0.1:0"})
	if err != nil {
		stack.Close(context.Background())
		t.Fatal(err)
	}
	p := proxy.New(proxy.Options{DrainTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p.Shutdown(ctx)
		if err := stack.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if err := p.Apply(&hw.Spec); err != nil {
		t.Fatal(err)
	}
	via := demo.Listeners{GRPC: p.Addr(demo.ListenerGRPC).String(), HTTP: p.Addr(demo.ListenerHTTP).String()}
	if err := stack.ServeGateway(via); err != nil {
		t.Fatal(err)
	}
	return stack, "http://" + via.HTTP
}

func newClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

const (
	traceID     = "4bf92f3577b34da6a3ce929d0e0e4736"
	traceparent = "00-" + traceID + "-00f067aa0ba902b7-01"
)

func chatRequest(t *testing.T, url, session, text string) *http.Request {
	t.Helper()
	body, _ := json.Marshal(demo.ChatRequest{Text: text})
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(demo.HeaderCaller, "client")
	req.Header.Set(demo.HeaderSession, session)
	req.Header.Set("traceparent", traceparent)
	req.Header.Set("baggage", "tenant=demo")
	return req
}

// TestTurnThroughHopwatch sends one turn of each kind through hopwatch and
// checks the answer and that every service saw the call, from the right
// caller, with the session and the trace forwarded.
func TestTurnThroughHopwatch(t *testing.T) {
	var seen calls
	cfg := demo.Config{Tokens: 5, OnCall: seen.add}
	_, base := startBehindHopwatch(t, cfg)
	client := newClient(t)

	tests := []struct {
		name    string
		path    string
		session string
		reply   func(t *testing.T, res *http.Response) string
	}{
		{
			name:    "json",
			path:    demo.ChatPath,
			session: "s-json",
			reply: func(t *testing.T, res *http.Response) string {
				var cr demo.ChatResponse
				if err := json.NewDecoder(res.Body).Decode(&cr); err != nil {
					t.Fatal(err)
				}
				if cr.Degraded {
					t.Error("degraded answer from a healthy stack")
				}
				return cr.Reply
			},
		},
		{
			name:    "sse",
			path:    demo.ChatStreamPath,
			session: "s-sse",
			reply: func(t *testing.T, res *http.Response) string {
				if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
					t.Errorf("Content-Type = %q", ct)
				}
				var reply strings.Builder
				events := readSSE(t, res.Body)
				for i, ev := range events {
					switch {
					case ev.name == "token":
						var tok struct {
							Text  string `json:"text"`
							Index int    `json:"index"`
						}
						json.Unmarshal([]byte(ev.data), &tok)
						if tok.Index != i {
							t.Errorf("token %d has index %d", i, tok.Index)
						}
						reply.WriteString(tok.Text)
					case ev.name == "done" && i == len(events)-1:
					default:
						t.Errorf("unexpected event %d: %+v", i, ev)
					}
				}
				if len(events) != 6 {
					t.Errorf("got %d events, want 5 tokens and done", len(events))
				}
				return reply.String()
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := client.Do(chatRequest(t, base+tt.path, tt.session, "where is my order?"))
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(res.Body)
				t.Fatalf("status %s: %s", res.Status, b)
			}
			reply := tt.reply(t, res)
			if n := len(strings.Fields(reply)); n != 5 {
				t.Errorf("reply %q has %d words, want 5 (Tokens)", reply, n)
			}

			byService := seen.byService()
			for _, svc := range demo.Services {
				var got []demo.Call
				for _, c := range byService[svc] {
					if c.Session == tt.session {
						got = append(got, c)
					}
				}
				if len(got) != 1 {
					t.Errorf("%s saw %d calls of session %s, want 1", svc, len(got), tt.session)
					continue
				}
				wantCaller := "gateway"
				switch svc {
				case demo.ServiceGateway:
					wantCaller = "client"
				case demo.ServiceLLM:
					wantCaller = demo.ServiceInference // the model server is called by inference
				}
				if got[0].Caller != wantCaller {
					t.Errorf("%s saw caller %q, want %q", svc, got[0].Caller, wantCaller)
				}
				// Compare the trace ID only: once hopwatch records spans, the
				// parent ID changes at every hop, the trace stays.
				if !strings.Contains(got[0].Traceparent, traceID) {
					t.Errorf("%s saw traceparent %q, want trace %s", svc, got[0].Traceparent, traceID)
				}
			}
		})
	}
}

type sseEvent struct{ name, data string }

func readSSE(t *testing.T, r io.Reader) []sseEvent {
	t.Helper()
	var out []sseEvent
	var ev sseEvent
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			out = append(out, ev)
			ev = sseEvent{}
		case strings.HasPrefix(line, "event: "):
			ev.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStreamFirstTokenBeforeEnd checks that the SSE variant really
// streams, through the gateway and hopwatch both: the first token event
// arrives while the rest of the reply is an hour away. Were anything on
// the way buffering, the test would time out instead.
func TestStreamFirstTokenBeforeEnd(t *testing.T) {
	cfg := demo.Config{Tokens: 3, TokenGap: demo.Latency{Base: time.Hour}}
	_, base := startBehindHopwatch(t, cfg)
	client := newClient(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := chatRequest(t, base+demo.ChatStreamPath, "s-stream", "are you open on sunday?").WithContext(ctx)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("status %s", res.Status)
	}
	br := bufio.NewReader(res.Body)
	first, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("no first event before the stream's end: %v", err)
	}
	if first != "event: token\n" {
		t.Errorf("first line %q, want a token event", first)
	}
	data, _ := br.ReadString('\n')
	if !strings.Contains(data, `"index":0`) {
		t.Errorf("first data %q, want token 0", data)
	}
	// Leaving now cancels the call down the chain (hopwatch, gateway,
	// inference); the cleanup's Close then finds nothing hanging.
	cancel()
}

// TestKB exercises the knowledge base's HTTP API directly.
func TestKB(t *testing.T) {
	stack, err := demo.Start(demo.Config{KBSlowShare: 1, KBSlow: demo.Latency{Base: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stack.Close(context.Background()) })
	client := newClient(t)
	url := "http://" + stack.Endpoints()[demo.ServiceKB] + demo.KBPath

	tests := []struct {
		name, method, body string
		want               int
	}{
		{"search", http.MethodPost, `{"query":"store hours"}`, http.StatusOK},
		{"no query", http.MethodPost, `{}`, http.StatusBadRequest},
		{"not JSON", http.MethodPost, `store hours`, http.StatusBadRequest},
		{"GET", http.MethodGet, "", http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, url, strings.NewReader(tt.body))
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", res.StatusCode, tt.want)
			}
			if tt.want != http.StatusOK {
				return
			}
			var got struct {
				Results []struct{ Title, Snippet string }
			}
			if err := json.NewDecoder(res.Body).Decode(&got); err != nil || len(got.Results) == 0 {
				t.Errorf("results %+v, err %v", got, err)
			}
		})
	}
	// The GET never reaches the handler: the mux answers 405 itself.
	if n := stack.Calls()[demo.ServiceKB]; n != int64(len(tests)-1) {
		t.Errorf("kb counted %d calls, want %d", n, len(tests)-1)
	}
}

func TestServeGatewayTwice(t *testing.T) {
	stack, err := demo.Start(demo.Config{})
	if err != nil {
		t.Fatal(err)
	}
	via := demo.Listeners{GRPC: "127.0.0.1:1", HTTP: "127.0.0.1:1"}
	if err := stack.ServeGateway(via); err != nil {
		t.Fatal(err)
	}
	if err := stack.ServeGateway(via); err != demo.ErrGatewayServing {
		t.Errorf("second ServeGateway: %v, want ErrGatewayServing", err)
	}
	if err := stack.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := stack.ServeGateway(via); err != demo.ErrClosed {
		t.Errorf("ServeGateway after Close: %v, want ErrClosed", err)
	}
}

// TestVerdicts: the NLU's no_match and the DM's resolved reach the
// gateway's answer both as the verdict header (for hopwatch, which reads
// and removes it) and in the body (for the client); a goodbye is
// understood even by an NLU that understands nothing else.
func TestVerdicts(t *testing.T) {
	tests := []struct {
		name string
		cfg  demo.Config
		text string
		want string
	}{
		{"question understood", demo.Config{}, "where is my order?", ""},
		{"question not understood", demo.Config{NoMatchShare: 1}, "where is my order?", demo.VerdictNoMatch},
		{"goodbye resolves", demo.Config{}, "thanks, bye", demo.VerdictResolved},
		{"goodbye beats no_match", demo.Config{NoMatchShare: 1}, "great, thank you, bye", demo.VerdictResolved},
		{"not understood once the NLU degrades", demo.Config{DegradeAfter: time.Nanosecond, DegradedNoMatchShare: 1},
			"where is my order?", demo.VerdictNoMatch},
		{"understood before it degrades", demo.Config{NoMatchShare: 0, DegradeAfter: time.Hour, DegradedNoMatchShare: 1},
			"where is my order?", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, url := startBehindHopwatch(t, tt.cfg)
			client := newClient(t)
			for _, path := range []string{demo.ChatPath, demo.ChatStreamPath} {
				res, err := client.Do(chatRequest(t, url+path, "s-"+tt.name, tt.text))
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					t.Fatalf("%s: %s: %s", path, res.Status, body)
				}
				if got := res.Header.Get(demo.HeaderVerdict); got != tt.want {
					t.Errorf("%s: %s %q, want %q", path, demo.HeaderVerdict, got, tt.want)
				}
				var got string
				if path == demo.ChatPath {
					var cr demo.ChatResponse
					if err := json.Unmarshal(body, &cr); err != nil {
						t.Fatal(err)
					}
					got = cr.Outcome
				} else if i := bytes.Index(body, []byte("event: done\ndata: ")); i >= 0 {
					var done struct{ Outcome string }
					json.NewDecoder(bytes.NewReader(body[i+len("event: done\ndata: "):])).Decode(&done)
					got = done.Outcome
				} else {
					t.Fatalf("%s: no done event in %s", path, body)
				}
				if got != tt.want {
					t.Errorf("%s: outcome in the answer %q, want %q", path, got, tt.want)
				}
			}
		})
	}
}
