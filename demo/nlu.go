package demo

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	botv1 "github.com/hopwatch/hopwatch/proto/bot/v1"
)

// intents are what the simulated NLU can recognise; each has a question
// pool (users.go) and a KB topic (dialog.go).
var intents = []string{"order_status", "opening_hours", "returns", "delivery_cost", "account_help"}

// Intents outside the question pools.
const (
	// IntentGoodbye is a user closing the conversation ("thanks, bye").
	IntentGoodbye = "goodbye"
	// IntentNoMatch is the NLU's fallback intent: it did not understand.
	IntentNoMatch = "no_match"
)

// closings are what users say to end a conversation. The NLU knows them by
// the hash of their text (it never sees text), as a real NLU knows them by
// training.
var closings = []string{"thanks, bye", "great, thank you, bye", "perfect, that helps, bye"}

var closingHashes = func() map[string]bool {
	m := make(map[string]bool, len(closings))
	for _, c := range closings {
		sum := sha256.Sum256([]byte(c))
		m[hex.EncodeToString(sum[:])] = true
	}
	return m
}()

// nlu is the simulated NLU service.
type nlu struct {
	botv1.UnimplementedNLUServer
	s *Stack
}

// Parse derives the intent from the text hash. A real model would read the
// text; deriving it from the hash keeps the answer stable per utterance
// (a repeated question gets the same intent) without any model. On a
// NoMatchShare of questions it does not understand: it answers the
// no_match intent and says so in the verdict header, as a service tells
// hopwatch without an SDK.
func (n nlu) Parse(ctx context.Context, req *botv1.ParseRequest) (*botv1.ParseResponse, error) {
	n.s.observeGRPC(ctx, ServiceNLU)
	h, err := hex.DecodeString(req.GetTextHash())
	if err != nil || len(h) < 2 {
		return nil, status.Error(codes.InvalidArgument, "text_hash must be a hex SHA-256")
	}
	if err := sleep(ctx, n.s.cfg.NLU.draw(n.s.rnd)); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if closingHashes[req.GetTextHash()] {
		return &botv1.ParseResponse{Intent: IntentGoodbye, Confidence: 1}, nil
	}
	if share := n.s.noMatchShare(); share > 0 && n.s.rnd.float64() < share {
		grpc.SetHeader(ctx, metadata.Pairs(HeaderVerdict, VerdictNoMatch))
		return &botv1.ParseResponse{Intent: IntentNoMatch}, nil
	}
	return &botv1.ParseResponse{
		Intent:     intents[int(h[0])%len(intents)],
		Confidence: 0.6 + 0.4*float32(h[1])/255,
	}, nil
}

// noMatchShare is the share of questions the NLU does not understand now:
// Config.NoMatchShare, or DegradedNoMatchShare once DegradeAfter has passed.
func (s *Stack) noMatchShare() float64 {
	if d := s.cfg.DegradeAfter; d > 0 && time.Since(s.start) >= d {
		return s.cfg.DegradedNoMatchShare
	}
	return s.cfg.NoMatchShare
}
