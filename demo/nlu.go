package demo

import (
	"context"
	"encoding/hex"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	botv1 "github.com/hopwatch/hopwatch/proto/bot/v1"
)

// intents are what the simulated NLU can recognise; each has a question
// pool (users.go) and a KB topic (dialog.go).
var intents = []string{"order_status", "opening_hours", "returns", "delivery_cost", "account_help"}

// nlu is the simulated NLU service.
type nlu struct {
	botv1.UnimplementedNLUServer
	s *Stack
}

// Parse derives the intent from the text hash. A real model would read the
// text; deriving it from the hash keeps the answer stable per utterance
// (a repeated question gets the same intent) without any model.
func (n nlu) Parse(ctx context.Context, req *botv1.ParseRequest) (*botv1.ParseResponse, error) {
	n.s.observeGRPC(ctx, ServiceNLU)
	h, err := hex.DecodeString(req.GetTextHash())
	if err != nil || len(h) < 2 {
		return nil, status.Error(codes.InvalidArgument, "text_hash must be a hex SHA-256")
	}
	if err := sleep(ctx, n.s.cfg.NLU.draw(n.s.rnd)); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return &botv1.ParseResponse{
		Intent:     intents[int(h[0])%len(intents)],
		Confidence: 0.6 + 0.4*float32(h[1])/255,
	}, nil
}
