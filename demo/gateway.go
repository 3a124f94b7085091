package demo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	botv1 "github.com/hopwatch/hopwatch/proto/bot/v1"
)

// Gateway endpoints.
const (
	ChatPath       = "/v1/chat"
	ChatStreamPath = "/v1/chat/stream"
)

// Listeners are the addresses (host:port) of hopwatch's listeners that the
// gateway sends every call through.
type Listeners struct {
	// GRPC receives the NLU, DM and inference calls.
	GRPC string
	// HTTP receives the knowledge-base calls.
	HTTP string
}

// ChatRequest is the body of POST /v1/chat and /v1/chat/stream.
type ChatRequest struct {
	// SessionID is used when the request has no x-session-id header.
	SessionID string `json:"session_id"`
	Text      string `json:"text"`
}

// ChatResponse is the answer of POST /v1/chat.
type ChatResponse struct {
	Reply string `json:"reply"`
	// Degraded is true when the reply was made without a real knowledge-base
	// answer (the KB failed, or hopwatch answered for it from a fallback).
	Degraded bool `json:"degraded,omitempty"`
	// Outcome is the bot's own verdict on the turn, when it gave one:
	// no_match (it did not understand), resolved (the user closed the
	// conversation). The client sees it here; hopwatch sees it in the
	// verdict header, which it removes.
	Outcome string `json:"outcome,omitempty"`
}

// gateway is the bot's front door. It owns its clients to hopwatch and
// knows no service address: routing is hopwatch's job.
type gateway struct {
	s     *Stack
	conn  *grpc.ClientConn
	nlu   botv1.NLUClient
	dm    botv1.DialogManagerClient
	inf   botv1.InferenceClient
	http  *http.Client
	tr    *http.Transport // under http's tracing, for CloseIdleConnections
	kbURL string
}

func newGateway(s *Stack, via Listeners) (*gateway, error) {
	if via.GRPC == "" || via.HTTP == "" {
		return nil, errors.New("demo: gateway needs both hopwatch listener addresses")
	}
	// One connection for all three services: they share hopwatch's grpc
	// listener, which routes by service name, as a sidecar would.
	// The otelgrpc client handler starts a span per call and sends its
	// context on: the gateway's own spans sit between hopwatch's hops.
	conn, err := grpc.NewClient(via.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()),
		s.tracing.grpcClient(ServiceGateway))
	if err != nil {
		return nil, fmt.Errorf("demo: gateway: %w", err)
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64, // one per concurrent turn, so slow KB calls do not force new connections
		IdleConnTimeout:     90 * time.Second,
	}
	return &gateway{
		s:     s,
		conn:  conn,
		nlu:   botv1.NewNLUClient(conn),
		dm:    botv1.NewDialogManagerClient(conn),
		inf:   botv1.NewInferenceClient(conn),
		http:  &http.Client{Transport: s.tracing.httpTransport(ServiceGateway, tr)},
		tr:    tr,
		kbURL: "http://" + via.HTTP + KBPath,
	}, nil
}

func (g *gateway) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+ChatPath, g.chat)
	mux.HandleFunc("POST "+ChatStreamPath, g.chatStream)
	return mux
}

func (g *gateway) close() {
	g.conn.Close()
	g.tr.CloseIdleConnections()
}

// chat answers a turn with one JSON document once the reply is complete.
func (g *gateway) chat(w http.ResponseWriter, r *http.Request) {
	g.s.observeHTTP(r, ServiceGateway)
	t, err := g.begin(w, r)
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, err.Error())
		return
	}
	p, err := g.plan(t)
	if err != nil {
		writeCallError(w, err)
		return
	}
	var reply strings.Builder
	err = g.generate(t, p.prompt, func(tok *botv1.Token) error {
		reply.WriteString(tok.GetText())
		return nil
	})
	if err != nil {
		writeCallError(w, err)
		return
	}
	setVerdict(w, p.verdict)
	writeJSON(w, http.StatusOK, ChatResponse{Reply: reply.String(), Degraded: p.degraded, Outcome: p.verdict})
}

// chatStream answers a turn as server-sent events, one per token. The
// response starts with the first token, not before: until then a failure
// can still be an honest HTTP status, and the time to the response's first
// byte is the time to the first token, which is what users wait for.
func (g *gateway) chatStream(w http.ResponseWriter, r *http.Request) {
	g.s.observeHTTP(r, ServiceGateway)
	t, err := g.begin(w, r)
	if err != nil {
		writeJSONError(w, http.StatusBadRequest, err.Error())
		return
	}
	p, err := g.plan(t)
	if err != nil {
		writeCallError(w, err)
		return
	}
	setVerdict(w, p.verdict) // sent with the headers, at the first token
	var sse *sseWriter
	err = g.generate(t, p.prompt, func(tok *botv1.Token) error {
		if sse == nil {
			sse = newSSEWriter(w)
		}
		return sse.event(eventToken, tokenEvent{Text: tok.GetText(), Index: tok.GetIndex()})
	})
	switch {
	case err != nil && sse == nil:
		writeCallError(w, err)
	case err != nil:
		sse.event(eventError, errorEvent{Error: err.Error()})
	default:
		if sse == nil {
			sse = newSSEWriter(w) // a reply of no tokens is still a reply
		}
		sse.event(eventDone, doneEvent{Degraded: p.degraded, Outcome: p.verdict})
	}
}

// turn is one user request as the gateway passes it on.
type turn struct {
	// ctx carries the outgoing gRPC metadata, and the trace context and
	// baggage that otelhttp extracted from the request: the otelgrpc and
	// otelhttp client handlers send them on.
	ctx     context.Context
	session string
	text    string
	header  http.Header // for the HTTP calls
}

// begin reads the request and prepares what every outgoing call carries:
// the caller name and the session. The trace context is not copied by
// hand: it is in r.Context(), and the instrumented clients propagate it.
func (g *gateway) begin(w http.ResponseWriter, r *http.Request) (*turn, error) {
	var req ChatRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&req); err != nil {
		return nil, fmt.Errorf("want a JSON body {session_id, text}: %v", err)
	}
	if req.Text == "" {
		return nil, errors.New("text is required")
	}
	session := r.Header.Get(HeaderSession)
	if session == "" {
		session = req.SessionID
	}
	md := metadata.Pairs(HeaderCaller, ServiceGateway)
	h := http.Header{}
	h.Set(HeaderCaller, ServiceGateway)
	if session != "" {
		md.Set(HeaderSession, session)
		h.Set(HeaderSession, session)
	}
	return &turn{
		ctx:     metadata.NewOutgoingContext(r.Context(), md),
		session: session,
		text:    req.Text,
		header:  h,
	}, nil
}

// plan is what the turn's calls before inference decided.
type plan struct {
	prompt   string
	degraded bool
	// verdict is the strongest verdict the NLU and DM gave (resolved over
	// no_match), "" for none.
	verdict string
}

// setVerdict puts the turn's verdict on the gateway's own answer. The NLU
// and DM give theirs as gRPC response metadata, which hopwatch reads (and
// removes) on their hops; the gateway knows the same from their answers
// (the no_match intent, the close action), as a real gateway would, and
// says it on the chat route too, for callers that are not hopwatch.
func setVerdict(w http.ResponseWriter, v string) {
	if v != "" {
		w.Header().Set(HeaderVerdict, v)
	}
}

// plan runs NLU → DM → KB. A knowledge-base failure degrades the answer
// instead of failing the turn: the KB is an external API, and a bot that
// goes down with it is worse than one that answers less precisely.
func (g *gateway) plan(t *turn) (plan, error) {
	sum := sha256.Sum256([]byte(t.text))
	parsed, err := g.nlu.Parse(t.ctx, &botv1.ParseRequest{
		SessionId:  t.session,
		TextHash:   hex.EncodeToString(sum[:]),
		TextLength: uint32(len(t.text)),
	})
	if err != nil {
		return plan{}, fmt.Errorf("nlu: %w", err)
	}
	next, err := g.dm.Next(t.ctx, &botv1.NextRequest{SessionId: t.session, Intent: parsed.GetIntent()})
	if err != nil {
		return plan{}, fmt.Errorf("dm: %w", err)
	}
	p := plan{prompt: parsed.GetIntent()}
	switch {
	case next.GetAction() == ActionClose:
		p.verdict = VerdictResolved // the DM decides last: its resolved beats the NLU's no_match
	case parsed.GetIntent() == IntentNoMatch:
		p.verdict = VerdictNoMatch
	}
	if q := next.GetKbQuery(); q != "" {
		p.prompt = q
		res, err := g.searchKB(t, q)
		switch {
		case t.ctx.Err() != nil:
			return plan{}, fmt.Errorf("kb: %w", t.ctx.Err())
		case err != nil:
			p.degraded = true
		default:
			p.degraded = res.Degraded
		}
	}
	return p, nil
}

// searchKB calls the knowledge base through hopwatch's http listener.
func (g *gateway) searchKB(t *turn, query string) (*kbResponse, error) {
	body, _ := json.Marshal(kbRequest{Query: query})
	req, err := http.NewRequestWithContext(t.ctx, http.MethodPost, g.kbURL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = t.header.Clone()
	req.Header.Set("Content-Type", "application/json")
	res, err := g.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		// Drain a little so the connection can be reused.
		io.Copy(io.Discard, io.LimitReader(res.Body, maxBody))
		return nil, fmt.Errorf("kb: %s", res.Status)
	}
	var out kbResponse
	if err := json.NewDecoder(io.LimitReader(res.Body, maxBody)).Decode(&out); err != nil {
		return nil, fmt.Errorf("kb: %w", err)
	}
	return &out, nil
}

// generate streams the reply from inference into emit.
func (g *gateway) generate(t *turn, prompt string, emit func(*botv1.Token) error) error {
	ctx, cancel := context.WithCancel(t.ctx)
	defer cancel() // ends the stream if emit fails (the user went away)
	stream, err := g.inf.Generate(ctx, &botv1.GenerateRequest{SessionId: t.session, Prompt: prompt})
	if err != nil {
		return fmt.Errorf("inference: %w", err)
	}
	for {
		tok, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("inference: %w", err)
		}
		if err := emit(tok); err != nil {
			return err
		}
	}
}

// writeCallError is where a failed downstream call becomes the gateway's
// HTTP answer. status.Code sees through the %w wrapping.
func writeCallError(w http.ResponseWriter, err error) {
	code := http.StatusBadGateway
	switch {
	case errors.Is(err, context.DeadlineExceeded), status.Code(err) == codes.DeadlineExceeded:
		code = http.StatusGatewayTimeout
	case errors.Is(err, context.Canceled), status.Code(err) == codes.Canceled:
		// The user is gone; the status is for logs only. 499 is nginx's
		// "client closed request", the usual convention.
		code = 499
	}
	writeJSONError(w, code, err.Error())
}
