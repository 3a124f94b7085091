// Package botv1 is the demo bot's internal protocol (bot.v1): the NLU,
// DialogManager and Inference gRPC services that the demo gateway calls,
// every call through hopwatch's grpc listener.
//
// It sits beside the request path, not on it: hopwatch forwards these calls
// as raw frames and never imports this package. The demo stack (demo/) and
// tests use it to speak real gRPC, including the server stream of tokens
// that makes time to first token a measurable hop.
//
// bot.pb.go and bot_grpc.pb.go are generated from bot.proto; edit the
// .proto and run `make proto` (protoc from Debian's protobuf-compiler, Go
// plugins at the versions pinned in the Makefile). This file is the only
// hand-written one.
package botv1
