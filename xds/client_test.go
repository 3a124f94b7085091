package xds

import (
	"errors"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/routes"
)

// TestMaybeApply: a configuration is applied only once complete (every
// route configuration, assignment and cluster named is there), an
// unchanged one is not applied again, and a refused one is an error (a
// NACK); SetBase re-applies the last one over the file's new callers.
func TestMaybeApply(t *testing.T) {
	full, err := Build(fleetSpec())
	if err != nil {
		t.Fatal(err)
	}
	var applied []*routes.Spec
	var refuse error
	c, err := New(Options{Config: config.XDS{Server: "127.0.0.1:1", NodeID: "n"}, Registerer: prometheus.NewRegistry(),
		Apply: func(s *routes.Spec) error {
			if refuse != nil {
				return refuse
			}
			applied = append(applied, s)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	without := func(drop string) *resources {
		rs := resourcesOf(full)
		switch drop {
		case "routes":
			rs.routes = map[string]*routev3.RouteConfiguration{}
		case "endpoints":
			rs.endpoints = map[string]*endpointv3.ClusterLoadAssignment{}
		case "clusters":
			rs.clusters = map[string]*clusterv3.Cluster{}
		case "listeners":
			rs.listeners = map[string]*listenerv3.Listener{}
		}
		return rs
	}
	for _, tc := range []struct {
		name    string
		rs      *resources
		refuse  error
		applies int // total so far
		err     string
	}{
		{"listeners before their route configurations", without("routes"), nil, 0, ""},
		{"clusters before their assignments", without("endpoints"), nil, 0, ""},
		{"routes before the clusters they name", without("clusters"), nil, 0, ""},
		{"complete", without(""), nil, 1, ""},
		{"unchanged", without(""), nil, 1, ""},
		{"refused by the proxy", without("listeners"), errors.New("listener busy"), 1, "listener busy"},
		{"empty is a configuration too", without("listeners"), nil, 2, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			refuse = tc.refuse
			err := c.maybeApply(tc.rs)
			if (err != nil) != (tc.err != "") || err != nil && !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("maybeApply = %v, want error %q", err, tc.err)
			}
			if len(applied) != tc.applies {
				t.Errorf("%d applies, want %d", len(applied), tc.applies)
			}
		})
	}
	if st := c.Status(); st.Applied.IsZero() || st.LastError != "" {
		t.Errorf("status = %+v", st)
	}
	if err := c.maybeApply(without("")); err != nil {
		t.Fatal(err)
	}
	n := len(applied)
	if err := c.SetBase(&routes.Spec{Callers: []string{"gateway", "nlu"}}); err != nil {
		t.Fatal(err)
	}
	if len(applied) != n+1 || len(applied[n].Listeners) != 2 || len(applied[n].Callers) != 2 {
		t.Errorf("SetBase applied %+v", applied[n:])
	}
}
