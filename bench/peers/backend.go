package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/grpc"

	botv1 "github.com/hopwatch/hopwatch/proto/bot/v1"
)

// The backend answers as cheaply as it can, so that the proxies' own cost
// dominates what the load generators see.

// backend is the gRPC and HTTP server every target forwards to.
type backend struct {
	grpc *grpc.Server
	http *http.Server
}

// sseEvents is how many events one SSE request streams (each flushed on
// its own, as a token stream would be).
const sseEvents = 20

// parser is the NLU service: one small answer per call.
type parser struct{ botv1.UnimplementedNLUServer }

var parseAnswer = &botv1.ParseResponse{Intent: "greet", Confidence: 0.93}

func (parser) Parse(context.Context, *botv1.ParseRequest) (*botv1.ParseResponse, error) {
	return parseAnswer, nil
}

type inference struct {
	botv1.UnimplementedInferenceServer
}

// slowPrompt makes Generate pause slowTokenGap between tokens, so that
// many streams are open at once, as token streams of a language model are.
const (
	slowPrompt   = "slow"
	slowTokenGap = 50 * time.Millisecond
)

// Generate sends max_tokens small messages.
func (inference) Generate(req *botv1.GenerateRequest, s grpc.ServerStreamingServer[botv1.Token]) error {
	n := int(req.GetMaxTokens())
	if n == 0 {
		n = streamMessages
	}
	for i := range n {
		if req.GetPrompt() == slowPrompt && i > 0 {
			select {
			case <-time.After(slowTokenGap):
			case <-s.Context().Done():
				return s.Context().Err()
			}
		}
		if err := s.Send(&botv1.Token{Text: "tok", Index: uint32(i)}); err != nil {
			return err
		}
	}
	return nil
}

func startBackend(grpcAddr, httpAddr string) (*backend, error) {
	gl, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return nil, fmt.Errorf("backend: %w", err)
	}
	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		gl.Close()
		return nil, fmt.Errorf("backend: %w", err)
	}
	gs := grpc.NewServer()
	botv1.RegisterNLUServer(gs, parser{})
	botv1.RegisterInferenceServer(gs, inference{})
	go gs.Serve(gl)

	mux := http.NewServeMux()
	body := []byte(`{"intent":"greet","confidence":0.93}`)
	mux.HandleFunc("/nlu/", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
	mux.HandleFunc("/sse/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		f := w.(http.Flusher)
		for i := range sseEvents {
			fmt.Fprintf(w, "data: {\"token\":%d}\n\n", i)
			f.Flush()
		}
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	// h2c with prior knowledge too, so the direct target serves the h2c
	// workload (the proxies speak HTTP/1.1 to it).
	hs.Protocols = new(http.Protocols)
	hs.Protocols.SetHTTP1(true)
	hs.Protocols.SetUnencryptedHTTP2(true)
	go hs.Serve(hl)
	return &backend{grpc: gs, http: hs}, nil
}

func (b *backend) Close() {
	b.grpc.Stop()
	b.http.Close()
}
