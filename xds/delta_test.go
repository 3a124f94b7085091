package xds

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/routes"
)

// deltaRecord is one delta request or response the test server saw.
type deltaRecord struct {
	stream int64
	req    *discoveryv3.DeltaDiscoveryRequest
	resp   *discoveryv3.DeltaDiscoveryResponse
}

// testServer is go-control-plane's server and snapshot cache on loopback,
// recording the delta traffic. With sotwOnly it has no
// DeltaAggregatedResources (UNIMPLEMENTED), as older servers.
type testServer struct {
	cache cachev3.SnapshotCache
	addr  string
	// drop makes the server end the stream when the client ACKs the
	// next response that carries assignments.
	drop atomic.Bool

	mu        sync.Mutex
	rec       []deltaRecord
	dropNonce string
}

type sotwOnly struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	srv serverv3.Server
}

func (s sotwOnly) StreamAggregatedResources(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return s.srv.StreamAggregatedResources(st)
}

func startTestServer(t *testing.T, sotwOnlyServer bool, creds ...grpc.ServerOption) *testServer {
	t.Helper()
	ts := &testServer{cache: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)}
	cb := serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			ts.mu.Lock()
			defer ts.mu.Unlock()
			ts.rec = append(ts.rec, deltaRecord{stream: id, req: proto.Clone(req).(*discoveryv3.DeltaDiscoveryRequest)})
			if ts.dropNonce != "" && req.GetResponseNonce() == ts.dropNonce {
				ts.dropNonce = ""
				return io.ErrUnexpectedEOF
			}
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
			ts.mu.Lock()
			ts.rec = append(ts.rec, deltaRecord{stream: id, resp: proto.Clone(resp).(*discoveryv3.DeltaDiscoveryResponse)})
			if resp.GetTypeUrl() == resourcev3.EndpointType && len(resp.GetResources()) > 0 && ts.drop.CompareAndSwap(true, false) {
				ts.dropNonce = resp.GetNonce()
			}
			ts.mu.Unlock()
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := serverv3.NewServer(ctx, ts.cache, cb)
	gs := grpc.NewServer(creds...)
	if sotwOnlyServer {
		discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, sotwOnly{srv: srv})
	} else {
		discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	go gs.Serve(ln)
	t.Cleanup(func() {
		cancel()
		gs.Stop()
	})
	return ts
}

// set publishes spec, built by Build (then changed by edit), as version.
func (ts *testServer) set(t *testing.T, node, version string, spec *routes.Spec, edit func(*Resources)) {
	t.Helper()
	res, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(res)
	}
	snap := map[resourcev3.Type][]types.Resource{}
	for _, m := range res.Listeners {
		snap[resourcev3.ListenerType] = append(snap[resourcev3.ListenerType], m)
	}
	for _, m := range res.Routes {
		snap[resourcev3.RouteType] = append(snap[resourcev3.RouteType], m)
	}
	for _, m := range res.Clusters {
		snap[resourcev3.ClusterType] = append(snap[resourcev3.ClusterType], m)
	}
	for _, m := range res.Endpoints {
		snap[resourcev3.EndpointType] = append(snap[resourcev3.EndpointType], m)
	}
	s, err := cachev3.NewSnapshot(version, snap)
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.cache.SetSnapshot(context.Background(), node, s); err != nil {
		t.Fatal(err)
	}
}

// records returns what the server saw so far.
func (ts *testServer) records() []deltaRecord {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return slices.Clone(ts.rec)
}

// recorder is an Apply that keeps every spec applied.
type recorder struct {
	mu    sync.Mutex
	specs []*routes.Spec
}

func (r *recorder) apply(s *routes.Spec) error {
	r.mu.Lock()
	r.specs = append(r.specs, s)
	r.mu.Unlock()
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.specs)
}

func (r *recorder) last() *routes.Spec {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.specs) == 0 {
		return nil
	}
	return r.specs[len(r.specs)-1]
}

func upstreamNames(s *routes.Spec) []string {
	var names []string
	for _, u := range s.Upstreams {
		names = append(names, u.Name)
	}
	return names
}

// runClient runs a client of server until the test ends.
func runClient(t *testing.T, x config.XDS, apply func(*routes.Spec) error) (*Client, *prometheus.Registry) {
	return runClientLog(t, x, apply, io.Discard)
}

// runClientLog is runClient logging to w.
func runClientLog(t *testing.T, x config.XDS, apply func(*routes.Spec) error, w io.Writer) (*Client, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c, err := New(Options{Config: x, Apply: apply, Registerer: reg, Logger: slog.New(slog.NewTextHandler(w, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return c, reg
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// withoutKB is fleetSpec without the kb upstream and its route.
func withoutKB() *routes.Spec {
	s := fleetSpec()
	s.Routes = slices.DeleteFunc(s.Routes, func(r routes.Route) bool { return r.Upstream == "kb" })
	s.Upstreams = slices.DeleteFunc(s.Upstreams, func(u routes.Upstream) bool { return u.Name == "kb" })
	return s
}

// oneNLU is withoutKB with one nlu endpoint.
func oneNLU() *routes.Spec {
	s := withoutKB()
	s.Upstreams[0].Endpoints = []string{"127.0.0.1:7101"}
	return s
}

// TestDeltaProtocol follows one delta stream to go-control-plane's server
// through its life: a removal arrives as removed_resources and takes the
// upstream away (its assignment is unsubscribed); after the stream breaks
// the client comes back with initial_resource_versions and the server
// sends nothing again; an invalid update is NACKed once with the field
// path in error_detail, not applied, and the next good one is.
func TestDeltaProtocol(t *testing.T) {
	ts := startTestServer(t, false)
	ts.set(t, "n", "1", fleetSpec(), nil)
	rec := &recorder{}
	c, reg := runClient(t, config.XDS{Server: ts.addr, NodeID: "n", Protocol: config.XDSProtocolDelta}, rec.apply)
	waitFor(t, "the first configuration", func() bool { return rec.count() == 1 })
	if got := upstreamNames(rec.last()); !slices.Equal(got, []string{"kb", "nlu"}) {
		t.Fatalf("upstreams %v", got)
	}

	for _, step := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"removal through removed_resources", func(t *testing.T) {
			ts.set(t, "n", "2", withoutKB(), nil)
			// The route configuration and the clusters change in either
			// order: the removal is in once the upstream is gone.
			waitFor(t, "the upstream to go", func() bool { return slices.Equal(upstreamNames(rec.last()), []string{"nlu"}) })
			waitFor(t, "removed_resources [kb] for clusters, and kb's assignment unsubscribed", func() bool {
				var removed, unsubscribed bool
				for _, r := range ts.records() {
					if r.resp.GetTypeUrl() == resourcev3.ClusterType && slices.Equal(r.resp.GetRemovedResources(), []string{"kb"}) {
						removed = true
					}
					if r.req.GetTypeUrl() == resourcev3.EndpointType && slices.Equal(r.req.GetResourceNamesUnsubscribe(), []string{"kb"}) {
						unsubscribed = true
					}
				}
				return removed && unsubscribed
			})
		}},
		{"reconnect with initial_resource_versions", func(t *testing.T) {
			before := len(ts.records())
			applies := rec.count()
			ts.drop.Store(true)
			// A change makes the client ACK, and the server drops the
			// stream on that ACK: the change is applied, then the stream
			// starts over.
			ts.set(t, "n", "3", oneNLU(), nil)
			var first map[string]*discoveryv3.DeltaDiscoveryRequest
			waitFor(t, "a new stream's requests", func() bool {
				first = map[string]*discoveryv3.DeltaDiscoveryRequest{}
				streams := map[int64]bool{}
				for _, r := range ts.records()[before:] {
					if r.req != nil {
						streams[r.stream] = true
					}
					if r.req != nil && r.req.GetResponseNonce() == "" && len(streams) == 2 && first[r.req.GetTypeUrl()] == nil {
						first[r.req.GetTypeUrl()] = r.req
					}
				}
				return len(first) == 4
			})
			if rec.count() != applies+1 {
				t.Errorf("%d applies, want %d", rec.count(), applies+1)
			}
			for typ, want := range map[string][]string{
				resourcev3.ListenerType: {"bot-grpc", "bot-http", "grpc/bot-grpc", "grpc/bot-http"},
				resourcev3.ClusterType:  {"nlu"},
				resourcev3.RouteType:    {"bot-grpc", "bot-http"},
				resourcev3.EndpointType: {"nlu"},
			} {
				var got []string
				for n, v := range first[typ].GetInitialResourceVersions() {
					if v == "" {
						t.Errorf("%s %s: empty version", shortType(typ), n)
					}
					got = append(got, n)
				}
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Errorf("%s initial_resource_versions names %v, want %v", shortType(typ), got, want)
				}
			}
			time.Sleep(200 * time.Millisecond)
			for _, r := range ts.records()[before:] {
				if r.resp != nil && r.stream != ts.records()[before].stream && (len(r.resp.GetResources()) > 0 || len(r.resp.GetRemovedResources()) > 0) {
					t.Errorf("after reconnect the server sent %s %d resources, %d removed again", shortType(r.resp.GetTypeUrl()),
						len(r.resp.GetResources()), len(r.resp.GetRemovedResources()))
				}
			}
			if rec.count() != applies+1 {
				t.Errorf("reconnecting applied again: %d applies, want %d", rec.count(), applies+1)
			}
			if st := c.Status(); !st.Connected || st.Protocol != config.XDSProtocolDelta {
				t.Errorf("status %+v", st)
			}
		}},
		{"NACK with error_detail", func(t *testing.T) {
			applies := rec.count()
			ts.set(t, "n", "bad", oneNLU(), func(r *Resources) {
				md, err := MetaStruct(map[string]any{"fallbak": map[string]any{"after": "1s"}})
				if err != nil {
					t.Fatal(err)
				}
				r.Routes[0].VirtualHosts[0].Routes[0].Metadata = md
			})
			nacks := func() []string {
				var out []string
				for _, r := range ts.records() {
					if d := r.req.GetErrorDetail(); d != nil {
						out = append(out, r.req.GetTypeUrl()+": "+d.GetMessage())
					}
				}
				return out
			}
			waitFor(t, "a NACK", func() bool { return len(nacks()) > 0 })
			time.Sleep(300 * time.Millisecond) // a NACK must not loop
			got := nacks()
			if len(got) != 1 || !strings.HasPrefix(got[0], resourcev3.RouteType+": ") ||
				!strings.Contains(got[0], `metadata.filter_metadata.hopwatch: fallbak: unknown field`) {
				t.Errorf("NACKs %q", got)
			}
			if rec.count() != applies {
				t.Errorf("a NACKed update was applied")
			}
			st := c.Status()
			if st.LastNACK == nil || st.LastNACK.Version != "bad" || st.Versions["route"] == "bad" {
				t.Errorf("status %+v, last NACK %+v", st, st.LastNACK)
			}
			if n := testkit.Metric(t, reg, "hopwatch_xds_updates_total", map[string]string{"type": "route", "result": "rejected"}); n != 1 {
				t.Errorf("rejected route updates = %v, want 1", n)
			}
		}},
		{"the next good update after a NACK", func(t *testing.T) {
			ts.set(t, "n", "4", fleetSpec(), nil)
			waitFor(t, "the fixed configuration", func() bool {
				return slices.Equal(upstreamNames(rec.last()), []string{"kb", "nlu"}) && c.Status().Versions["route"] == "4"
			})
		}},
	} {
		if !t.Run(step.name, step.run) {
			return
		}
	}
}

// TestProtocolSelection: auto speaks delta to a server that has it and
// falls back to state of the world at once against one that answers
// UNIMPLEMENTED; delta alone never connects to the latter, and says why.
func TestProtocolSelection(t *testing.T) {
	for _, tc := range []struct {
		name     string
		protocol string
		sotwOnly bool
		speaks   string // "": never connects
	}{
		{"auto with a delta server", config.XDSProtocolAuto, false, config.XDSProtocolDelta},
		{"auto (empty) with a state-of-the-world server", "", true, config.XDSProtocolSotW},
		{"sotw with a delta server", config.XDSProtocolSotW, false, config.XDSProtocolSotW},
		{"delta with a state-of-the-world server", config.XDSProtocolDelta, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startTestServer(t, tc.sotwOnly)
			ts.set(t, "n", "1", fleetSpec(), nil)
			rec := &recorder{}
			c, _ := runClient(t, config.XDS{Server: ts.addr, NodeID: "n", Protocol: tc.protocol}, rec.apply)
			if tc.speaks == "" {
				waitFor(t, "a stream error", func() bool { return c.Status().LastError != "" })
				time.Sleep(200 * time.Millisecond)
				if st := c.Status(); st.Connected || rec.count() != 0 || !strings.Contains(st.LastError, "Unimplemented") {
					t.Errorf("status %+v, %d applies", st, rec.count())
				}
				return
			}
			waitFor(t, "the configuration", func() bool { return rec.count() == 1 })
			if st := c.Status(); st.Protocol != tc.speaks || !st.Connected {
				t.Errorf("status %+v, want connected over %s", st, tc.speaks)
			}
		})
	}
}
