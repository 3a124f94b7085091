package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/internal/testkit"
	botv1 "github.com/hopwatch/hopwatch/proto/bot/v1"
)

// TestFloorForwards: the go-floor target carries every workload the
// harness runs (a row that failed its calls would look cheap), and passes
// a gRPC status through.
func TestFloorForwards(t *testing.T) {
	a := addrs{BackendGRPC: testkit.FreeAddr(t), BackendHTTP: testkit.FreeAddr(t),
		GRPC: testkit.FreeAddr(t), HTTP: testkit.FreeAddr(t), H2C: testkit.FreeAddr(t)}
	b, err := startBackend(a.BackendGRPC, a.BackendHTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- serveFloor(ctx, strings.Join([]string{a.GRPC, a.HTTP, a.H2C, a.BackendGRPC, a.BackendHTTP}, ","), ready)
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	cc, err := grpc.NewClient(a.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()

	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"grpc unary", func(t *testing.T) {
			res, err := botv1.NewNLUClient(cc).Parse(cctx, &botv1.ParseRequest{TextHash: "h"})
			if err != nil || res.GetIntent() != parseAnswer.GetIntent() {
				t.Fatalf("Parse = %v, %v; want intent %q", res, err, parseAnswer.GetIntent())
			}
		}},
		{"grpc server stream", func(t *testing.T) {
			s, err := botv1.NewInferenceClient(cc).Generate(cctx, &botv1.GenerateRequest{MaxTokens: 7})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for {
				tok, err := s.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if tok.GetIndex() != uint32(n) {
					t.Fatalf("token %d has index %d", n, tok.GetIndex())
				}
				n++
			}
			if n != 7 {
				t.Fatalf("got %d tokens, want 7", n)
			}
		}},
		{"grpc status passes through", func(t *testing.T) {
			_, err := botv1.NewDialogManagerClient(cc).Next(cctx, &botv1.NextRequest{})
			if status.Code(err) != codes.Unimplemented {
				t.Fatalf("err = %v, want the backend's Unimplemented", err)
			}
		}},
		{"http/1.1", func(t *testing.T) { checkHTTP(t, "http://"+a.HTTP+"/nlu/x", `"intent":"greet"`) }},
		{"sse on the h2c listener's HTTP/1.1", func(t *testing.T) { checkHTTP(t, "http://"+a.H2C+"/sse/x", "data: {\"token\":19}") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}

func checkHTTP(t *testing.T, url, want string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		t.Fatalf("GET %s = %d %q, %v; want 200 containing %q", url, res.StatusCode, body, err, want)
	}
}
