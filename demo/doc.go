// Package demo is a small but realistic chatbot stack to put behind
// hopwatch, and simulated users to drive it: what `make run` (cmd/demo)
// shows a newcomer, and what end-to-end tests run against.
//
// The services are real grpc-go and net/http servers on loopback ports:
// a gateway (HTTP JSON POST /v1/chat and the SSE variant POST
// /v1/chat/stream), NLU and dialog manager (unary gRPC), inference (a
// server stream of tokens) and a knowledge base that plays an external
// HTTP API, usually quick and now and then very slow. The gateway makes
// every call through hopwatch's listeners, never directly, forwarding the
// session header it received and naming itself in x-hop-caller, so that
// every arrow of the bot is a hop hopwatch can time. Every service traces
// itself the standard way (otelgrpc, otelhttp, W3C propagators; see
// tracing.go), exporting over OTLP when Config.OTLP is set.
//
// It sits outside the request path: hopwatch's packages never import it.
// It imports config/ only to render the demo's hopwatch configuration
// (deploy/examples/demo.yaml, embedded) with the ports it really bound.
//
// Typical use, as cmd/demo does it:
//
//	stack, _ := demo.Start(demo.DefaultConfig())
//	cfg, _ := stack.HopwatchConfig(demo.Placement{})
//	// start hopwatch with cfg, then:
//	stack.ServeGateway(demo.Listeners{GRPC: grpcAddr, HTTP: httpAddr})
//	rec := demo.NewRecorder(nil)
//	demo.RunUsers(ctx, demo.UsersConfig{URL: "http://" + httpAddr}, rec)
//	stack.Close(ctx)
package demo
