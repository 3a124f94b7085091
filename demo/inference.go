package demo

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	botv1 "github.com/hopwatch/hopwatch/proto/bot/v1"
)

// inference is the simulated language model.
type inference struct {
	botv1.UnimplementedInferenceServer
	s *Stack
}

// Generate streams the reply token by token. The tokens come from the
// model server (llm.go), which inference calls through hopwatch like a bot
// calls an OpenAI-compatible API: a long wait for the first token (prompt
// processing), then a steady trickle. That shape is why the gateway offers
// an SSE variant and why time to first token is its own number on a hop.
func (m inference) Generate(req *botv1.GenerateRequest, stream botv1.Inference_GenerateServer) error {
	ctx := stream.Context()
	m.s.observeGRPC(ctx, ServiceInference)
	n := int(req.GetMaxTokens())
	if n <= 0 {
		n = m.s.cfg.Tokens
	}
	i := 0
	err := m.s.complete(ctx, req.GetPrompt(), n, func(text string) error {
		i++
		return stream.Send(&botv1.Token{Text: text, Index: uint32(i - 1)})
	})
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return status.FromContextError(ctx.Err()).Err()
	}
	return status.Error(codes.Unavailable, err.Error())
}

// cannedReply is what the "model" says, cut or repeated to length.
var cannedReply = strings.Fields("Thanks for asking. Here is what I found: " +
	"you can check this any time in your account, and our team is happy to help if anything is unclear.")

// maxReplyTokens bounds a reply whatever a caller asks for (max_tokens is
// the caller's to set): the demo's services are reachable by anything that
// can reach hopwatch.
const maxReplyTokens = 4096

// replyWords returns n words (at most maxReplyTokens): the prompt's topic
// first, so replies differ by question, then the canned text.
func replyWords(prompt string, n int) []string {
	if n <= 0 {
		return nil
	}
	n = min(n, maxReplyTokens)
	src := append(strings.Fields("About "+prompt+":"), cannedReply...)
	out := make([]string, n)
	for i := range out {
		out[i] = src[i%len(src)]
	}
	return out
}
