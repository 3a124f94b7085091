package demo

import (
	"encoding/json"
	"net/http"
)

// KBPath is the knowledge base's search endpoint.
const KBPath = "/kb/search"

// kbRequest and kbResponse are the knowledge base's JSON, shaped like a
// typical third-party search API. The request carries the query only, not
// the session (that travels in x-session-id): the same question then has
// the same body, which is what a response cache, such as hopwatch's
// fallback cache, keys on.
type kbRequest struct {
	Query string `json:"query"`
}

type kbResponse struct {
	Results []kbResult `json:"results"`
	// Degraded marks an answer that is not the real one. The KB never sets
	// it; a hopwatch fallback answer (static body) does, and the gateway
	// passes it on to the user.
	Degraded bool `json:"degraded,omitempty"`
}

type kbResult struct {
	Title   string `json:"title"`
	Snippet string `json:"snippet"`
}

// maxBody bounds the JSON bodies the demo services read.
const maxBody = 64 << 10

// kb is the simulated external knowledge-base API. Most calls are quick;
// a configurable share is very slow, which is the behaviour of real
// external APIs that makes them the usual bottleneck of a bot.
type kb struct{ s *Stack }

func (k kb) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.s.observeHTTP(r, ServiceKB)
	var req kbRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&req); err != nil || req.Query == "" {
		writeJSONError(w, http.StatusBadRequest, "want a JSON body with a query")
		return
	}
	lat := k.s.cfg.KB
	if k.s.rnd.float64() < k.s.cfg.KBSlowShare {
		lat = k.s.cfg.KBSlow
	}
	if err := sleep(r.Context(), lat.draw(k.s.rnd)); err != nil {
		return // the caller is gone; nobody reads an answer
	}
	writeJSON(w, http.StatusOK, kbResponse{Results: []kbResult{{
		Title:   "FAQ: " + req.Query,
		Snippet: "Everything about " + req.Query + " is explained in your account settings.",
	}}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
