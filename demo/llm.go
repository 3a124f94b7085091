package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
)

// The model server: an OpenAI-compatible chat completions API, as OpenAI,
// vLLM, Ollama and llama.cpp serve it. The inference service calls it
// through hopwatch's HTTP listener, whose llm route has genai: {api:
// openai}, so hopwatch reads tokens, model, finish reason and time to
// first token from the wire.

// LLMPath is the model server's chat completions endpoint.
const LLMPath = "/v1/chat/completions"

// The two models the demo bot uses: short questions go to the small one.
const (
	ModelSmall = "faq-small"
	ModelLarge = "faq-large"
)

// chatCompletionRequest is the part of an OpenAI request the mock reads.
type chatCompletionRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string `json:"role"`
		Content string `json:"content"`
	} `json:"messages"`
	Stream        bool `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens int `json:"max_tokens"`
}

type chatChoice struct {
	Index        int            `json:"index"`
	Delta        map[string]any `json:"delta,omitempty"`
	Message      map[string]any `json:"message,omitempty"`
	FinishReason *string        `json:"finish_reason"`
}

type chatUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type chatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   *chatUsage   `json:"usage,omitempty"`
}

// systemPromptTokens stands for the bot's system prompt, which a real FAQ
// bot sends with every question: most input tokens are not the user's.
const systemPromptTokens = 40

// llm is the mock model: it answers with the canned reply, one word per
// token, after a time to first token and with a gap between tokens
// (Config.FirstToken, Config.TokenGap). A Config.LengthShare of answers
// run into max_tokens and finish with "length", as real answers do that
// were cut off.
type llm struct{ s *Stack }

func (m llm) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.s.observeHTTP(r, ServiceLLM)
	var req chatCompletionRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&req); err != nil || req.Model == "" || len(req.Messages) == 0 {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": map[string]any{
			"message": "want a chat completion request with a model and messages", "type": "invalid_request_error"}})
		return
	}
	prompt := req.Messages[len(req.Messages)-1].Content
	n := req.MaxTokens
	if n <= 0 {
		n = m.s.cfg.Tokens
	}
	finish := "stop"
	if m.s.rnd.float64() < m.s.cfg.LengthShare {
		finish = "length" // the answer wanted more than max_tokens
	}
	words := replyWords(prompt, n)
	usage := chatUsage{PromptTokens: systemPromptTokens + len(strings.Fields(prompt)), CompletionTokens: len(words)}
	usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
	ctx := r.Context()
	created := time.Now().Unix()
	if !req.Stream {
		wait := m.s.cfg.FirstToken.draw(m.s.rnd)
		for range max(len(words)-1, 0) {
			wait += m.s.cfg.TokenGap.draw(m.s.rnd)
		}
		if sleep(ctx, wait) != nil {
			return
		}
		writeJSON(w, http.StatusOK, chatCompletion{ID: "chatcmpl-demo", Object: "chat.completion", Created: created, Model: req.Model,
			Choices: []chatChoice{{Message: map[string]any{"role": "assistant", "content": strings.Join(words, " ")}, FinishReason: &finish}},
			Usage:   &usage})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	send := func(c chatCompletion) bool {
		c.ID, c.Object, c.Created, c.Model = "chatcmpl-demo", "chat.completion.chunk", created, req.Model
		b, _ := json.Marshal(c)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		http.NewResponseController(w).Flush()
		return true
	}
	if !send(chatCompletion{Choices: []chatChoice{{Delta: map[string]any{"role": "assistant", "content": ""}}}}) {
		return
	}
	for i, word := range words {
		wait := m.s.cfg.TokenGap
		if i == 0 {
			wait = m.s.cfg.FirstToken
		}
		if sleep(ctx, wait.draw(m.s.rnd)) != nil {
			return
		}
		if i > 0 {
			word = " " + word
		}
		c := chatChoice{Delta: map[string]any{"content": word}}
		if i == len(words)-1 {
			c.FinishReason = &finish
		}
		if !send(chatCompletion{Choices: []chatChoice{c}}) {
			return
		}
	}
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		send(chatCompletion{Choices: []chatChoice{}, Usage: &usage})
	}
	io.WriteString(w, "data: [DONE]\n\n")
}

// modelFor picks the model of a prompt, as a bot routes some questions to
// a larger model. The demo splits by a fixed property of the prompt (its
// length's parity), so that each question always goes to the same model
// and both models show in the table.
func modelFor(prompt string) string {
	if len(prompt)%2 == 0 {
		return ModelLarge
	}
	return ModelSmall
}

// errNoModelRoute means the inference service was called before the
// gateway told the stack where hopwatch is.
var errNoModelRoute = errors.New("inference: no route to the model server yet (the gateway is not serving)")

// complete asks the model server, through hopwatch, for a streamed reply
// of n tokens and passes each content chunk to emit. The call carries the
// caller, session and trace context of the incoming gRPC call, so the
// model hop joins the turn's trace.
func (s *Stack) complete(ctx context.Context, prompt string, n int, emit func(string) error) error {
	url := s.llmURL.Load()
	if url == nil {
		return errNoModelRoute
	}
	body, _ := json.Marshal(map[string]any{
		"model":          modelFor(prompt),
		"stream":         true,
		"stream_options": map[string]any{"include_usage": true},
		"max_tokens":     n,
		"messages":       []map[string]string{{"role": "user", "content": prompt}},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, *url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderCaller, ServiceInference)
	// The session, by hand: it is the bot's own header. The trace
	// context is in ctx (otelgrpc's server handler extracted it), and
	// llmClient's otelhttp transport sends it on.
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(HeaderSession); len(v) > 0 {
		req.Header.Set(HeaderSession, v[0])
	}
	res, err := s.llmClient.Do(req)
	if err != nil {
		return fmt.Errorf("model server: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return fmt.Errorf("model server: %s: %s", res.Status, bytes.TrimSpace(b))
	}
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var c struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			return fmt.Errorf("model server: %w", err)
		}
		for _, ch := range c.Choices {
			if ch.Delta.Content == "" {
				continue
			}
			if err := emit(ch.Delta.Content); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("model server: %w", err)
	}
	return nil
}
