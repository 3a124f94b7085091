// Command demo is the one-command demo (`make run`): it starts the demo bot
// stack (gateway, NLU, dialog manager, inference, knowledge base) on free
// loopback ports, hopwatch in-process in front of it with
// deploy/examples/demo.yaml, and simulated users; then it prints the admin
// URL and, every few seconds, a table of what is happening.
//
// It is not needed by the proxy: cmd/proxy is the product, this is a way to
// see it work. It wires hopwatch the way cmd/proxy does (config, proxy,
// admin) rather than importing it, so the demo stays one process that
// Ctrl-C stops cleanly.
//
// Usage:
//
//	go run ./cmd/demo [-duration 0] [-rate 4] [-users 8] [-fallback off]
//	                  [-admin 127.0.0.1:9901] [-kb-slow-share 0.15]
package main
