package demo

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	botv1 "github.com/hopwatch/hopwatch/proto/bot/v1"
)

// kbTopics maps an intent to what the dialog manager looks up.
var kbTopics = map[string]string{
	"order_status":  "order tracking",
	"opening_hours": "store hours",
	"returns":       "return policy",
	"delivery_cost": "shipping rates",
	"account_help":  "account recovery",
}

// dialog is the simulated dialog manager.
type dialog struct {
	botv1.UnimplementedDialogManagerServer
	s *Stack
}

// ActionClose is the DM's action that ends a conversation.
const ActionClose = "close"

// Next answers every known intent with a KB lookup, a goodbye by closing
// the conversation with the resolved verdict (the user got what they came
// for), anything else by asking to rephrase. It is stateless on purpose: a
// demo that runs until Ctrl-C must not grow a per-session map.
func (d dialog) Next(ctx context.Context, req *botv1.NextRequest) (*botv1.NextResponse, error) {
	d.s.observeGRPC(ctx, ServiceDM)
	if req.GetIntent() == "" {
		return nil, status.Error(codes.InvalidArgument, "intent is required")
	}
	if err := sleep(ctx, d.s.cfg.DM.draw(d.s.rnd)); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if req.GetIntent() == IntentGoodbye {
		grpc.SetHeader(ctx, metadata.Pairs(HeaderVerdict, VerdictResolved))
		return &botv1.NextResponse{Action: ActionClose}, nil
	}
	topic, ok := kbTopics[req.GetIntent()]
	if !ok {
		return &botv1.NextResponse{Action: "clarify"}, nil
	}
	return &botv1.NextResponse{Action: "answer", KbQuery: topic}, nil
}
