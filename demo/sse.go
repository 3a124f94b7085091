package demo

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Server-sent events (HTML Living Standard, "Server-sent events") as the
// gateway's streaming variant speaks them: one "token" event per token,
// then "done", or "error" if the turn fails after the stream began.
const (
	eventToken = "token"
	eventDone  = "done"
	eventError = "error"
)

type tokenEvent struct {
	Text  string `json:"text"`
	Index uint32 `json:"index"`
}

type doneEvent struct {
	Degraded bool `json:"degraded,omitempty"`
	// Outcome is the bot's verdict, as in ChatResponse.
	Outcome string `json:"outcome,omitempty"`
}

type errorEvent struct {
	Error string `json:"error"`
}

// sseWriter writes events and flushes each one at once: an event that sits
// in a buffer defeats the point of streaming tokens.
type sseWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newSSEWriter(w http.ResponseWriter) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	return &sseWriter{w: w, rc: http.NewResponseController(w)}
}

func (s *sseWriter) event(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(s.w, "event: %s\ndata: %s\n\n", name, data); err != nil {
		return err
	}
	return s.rc.Flush()
}

// readEvents calls fn for each event in r until r ends or fn fails. It
// handles what the demo's gateway sends (event and data fields, comments,
// multi-line data) rather than the whole standard (no id or retry).
func readEvents(r io.Reader, fn func(name, data string) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxBody)
	var name string
	var data []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if len(data) > 0 {
				if name == "" {
					name = "message" // the standard's default event type
				}
				if err := fn(name, strings.Join(data, "\n")); err != nil {
					return err
				}
			}
			name, data = "", nil
		case strings.HasPrefix(line, ":"):
			// comment (keep-alive)
		default:
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "event":
				name = value
			case "data":
				data = append(data, value)
			}
		}
	}
	return sc.Err()
}
