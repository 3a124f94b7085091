package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/demo"
)

// TestDemoOneTreePerTurn runs the demo, whose services trace themselves
// with otelgrpc and otelhttp (so every call after the first hop carries
// the calling service's own span as parent), with every knowledge-base
// call slow. Every finished turn in hopwatch's store is one tree with the
// entry hop as its only root, and the bottleneck analysis names the KB
// hop: without the services' spans (-receive=false: hopwatch never sees
// them, and stitches each inner hop under the attempt that reached its
// caller), and with them (received over OTLP on the admin address: the
// hops hang under the services' own spans).
func TestDemoOneTreePerTurn(t *testing.T) {
	for _, receive := range []bool{false, true} {
		t.Run(fmt.Sprintf("receive=%v", receive), func(t *testing.T) { checkOneTreePerTurn(t, receive) })
	}
}

func checkOneTreePerTurn(t *testing.T, receive bool) {
	o, err := parseFlags(append([]string{"-kb-slow-share", "1", "-seed", "5", fmt.Sprintf("-receive=%v", receive)}, loopback...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a, err := start(o.service, o.place, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	users := demo.UsersConfig{URL: a.httpURL(), Users: 4, Rate: 4, StreamShare: 0.5, Conversations: 1, MinTurns: 2, MaxTurns: 2}
	if err := demo.RunUsers(ctx, users, demo.NewRecorder(nil)); err != nil {
		t.Fatal(err)
	}

	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	fetch := func(path string, v any) {
		t.Helper()
		body, err := getJSON(context.Background(), c, a.adminURL(), path)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	var list struct {
		Traces []struct {
			TraceID string `json:"trace_id"`
			Root    hopKey `json:"root"`
			Outcome string `json:"outcome"`
		} `json:"traces"`
	}
	if receive {
		// The services export in batches, every second, later on a
		// loaded machine: wait until every service's spans are in (the
		// assertions below still fail if one never arrives).
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			got := map[string]bool{}
			var l struct {
				Traces []struct {
					TraceID string `json:"trace_id"`
				} `json:"traces"`
			}
			fetch("/api/traces?limit=1000", &l)
			for _, tr := range l.Traces {
				var d struct {
					Spans []struct {
						Kind    string `json:"kind"`
						Service string `json:"service"`
					} `json:"spans"`
				}
				fetch("/api/traces/"+tr.TraceID, &d)
				for _, sp := range d.Spans {
					if sp.Kind == "service" {
						got[sp.Service] = true
					}
				}
			}
			if len(got) >= len(demo.Services) {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	fetch("/api/traces?limit=1000", &list)
	turns, stitched, service := 0, 0, map[string]int{}
	for _, tr := range list.Traces {
		if tr.Root.Route != "chat" || tr.Outcome == "canceled" {
			continue // a turn cut short when the users stopped
		}
		turns++
		var d struct {
			Spans []struct {
				Kind     string `json:"kind"`
				Route    string `json:"route"`
				Parent   int    `json:"parent"`
				Stitched bool   `json:"stitched"`
				Service  string `json:"service"`
			} `json:"spans"`
		}
		fetch("/api/traces/"+tr.TraceID, &d)
		var roots []string
		routes := map[string]bool{}
		for _, sp := range d.Spans {
			if sp.Parent < 0 {
				roots = append(roots, sp.Kind+" "+sp.Route)
			}
			if sp.Stitched {
				stitched++
			}
			if sp.Kind == "service" {
				service[sp.Service]++
			}
			routes[sp.Route] = true
		}
		if len(roots) != 1 || roots[0] != "server chat" {
			t.Errorf("trace %s: roots %q, want only the chat hop's server span", tr.TraceID, roots)
		}
		for _, r := range []string{"nlu", "dm", "inference", "llm"} { // the KB is not called on every turn
			if !routes[r] {
				t.Errorf("trace %s: no %s hop (routes %v)", tr.TraceID, r, routes)
			}
		}
	}
	if turns < 4 {
		t.Fatalf("%d finished turns in the store, want at least 4", turns)
	}
	// Each turn has at least four inner hops (nlu, dm, inference, llm;
	// most a kb hop too). Without the services' spans, each is stitched.
	// With them, they are linked through the services' spans instead, and
	// every service's spans are there.
	switch {
	case !receive && stitched < 4*turns:
		t.Errorf("%d stitched hops in %d turns: the services' spans are not between hopwatch's", stitched, turns)
	case !receive && len(service) > 0:
		t.Errorf("service spans %v without the receiver", service)
	case receive:
		for _, svc := range demo.Services {
			if service[svc] == 0 {
				t.Errorf("no spans of service %s received (received: %v)", svc, service)
			}
		}
		if stitched >= 4*turns {
			t.Errorf("%d stitched hops in %d turns: the received spans did not link them", stitched, turns)
		}
	}

	var b bottlenecks
	fetch("/api/bottlenecks?window=1m&min_duration=1s", &b)
	if len(b.Hops) == 0 || b.Hops[0].hopKey != (hopKey{"gateway", "kb", "kb"}) {
		t.Errorf("bottlenecks %+v, want the KB hop first", b)
	}
}
