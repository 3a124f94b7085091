package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// deltaState is what the incremental (delta) client keeps across streams:
// the accepted resources, each one's version, and the names subscribed
// to. On reconnect the versions go back as initial_resource_versions, so
// the server sends only what changed meanwhile and names what was removed.
type deltaState struct {
	accepted resources
	versions map[string]map[string]string // type → resource name → version
	// names are the explicit subscriptions (route configurations,
	// assignments) by type; listeners and clusters are wildcard.
	names map[string][]string
}

func newDeltaState() *deltaState {
	ds := &deltaState{accepted: emptyResources(), versions: map[string]map[string]string{}, names: map[string][]string{}}
	for _, typ := range typeOrder {
		ds.versions[typ] = map[string]string{}
	}
	return ds
}

func emptyResources() resources {
	return resources{listeners: map[string]*listenerv3.Listener{}, routes: map[string]*routev3.RouteConfiguration{},
		clusters: map[string]*clusterv3.Cluster{}, endpoints: map[string]*endpointv3.ClusterLoadAssignment{}}
}

// deltaSession runs one Delta ADS stream (DeltaAggregatedResources) over
// ds until it fails or ctx ends. connected reports whether the server
// answered at all: an UNIMPLEMENTED error before that means it does not
// speak delta.
func (c *Client) deltaSession(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient, ds *deltaState) (connected bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return false, err
	}
	// Listeners and clusters: wildcard, in its legacy form (no names in
	// the first request), which every delta server understands. Route
	// configurations and assignments: by name, only once named (a first
	// request without names would be a wildcard).
	for _, typ := range typeOrder {
		req := &discoveryv3.DeltaDiscoveryRequest{Node: c.node, TypeUrl: typ,
			InitialResourceVersions: maps.Clone(ds.versions[typ])}
		if typ == resourcev3.RouteType || typ == resourcev3.EndpointType {
			if len(ds.names[typ]) == 0 {
				continue
			}
			req.ResourceNamesSubscribe = slices.Clone(ds.names[typ])
		}
		if err := s.Send(req); err != nil {
			return false, streamErr(err, func() error { _, err := s.Recv(); return err })
		}
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			return connected, err
		}
		if !connected {
			connected = true
			c.setConnected(true, "delta")
		}
		if err := c.handleDelta(s, ds, resp); err != nil {
			return connected, streamErr(err, func() error { _, err := s.Recv(); return err })
		}
	}
}

// handleDelta takes one incremental response: the resources it carries
// replace those of the same name, those it names in removed_resources go;
// the result is ACKed (and applied when complete) or NACKed, keeping the
// last good resources. A NACKed response is not sent again by the server
// (it counts it delivered): the next change of the same resources is.
func (c *Client) handleDelta(s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, ds *deltaState, resp *discoveryv3.DeltaDiscoveryResponse) error {
	typ := resp.GetTypeUrl()
	if !slices.Contains(typeOrder, typ) {
		// Not asked for; ACK it so that the stream goes on.
		return s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce()})
	}
	next, err := decodeDelta(ds.accepted, typ, resp)
	if err = c.judge(typ, resp.GetSystemVersionInfo(), &next, err); err != nil {
		return s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce(), ErrorDetail: nackDetail(err)})
	}
	ds.accepted = next
	for _, n := range resp.GetRemovedResources() {
		delete(ds.versions[typ], n)
	}
	for _, r := range resp.GetResources() {
		ds.versions[typ][r.GetName()] = r.GetVersion()
	}
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce()}); err != nil {
		return err
	}
	// Follow what the accepted listeners and clusters name: subscribe to
	// the new names, unsubscribe from (and forget) the ones no longer named.
	for _, dep := range dependencies(&ds.accepted) {
		cur := ds.names[dep.typ]
		var sub, unsub []string
		for _, n := range dep.names {
			if !slices.Contains(cur, n) {
				sub = append(sub, n)
			}
		}
		for _, n := range cur {
			if !slices.Contains(dep.names, n) {
				unsub = append(unsub, n)
			}
		}
		if len(sub) == 0 && len(unsub) == 0 {
			continue
		}
		ds.names[dep.typ] = slices.Clone(dep.names)
		if len(unsub) > 0 {
			ds.accepted = withRemoved(ds.accepted, dep.typ, unsub)
			for _, n := range unsub {
				delete(ds.versions[dep.typ], n)
			}
		}
		if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: dep.typ,
			ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}); err != nil {
			return err
		}
	}
	return nil
}

// without returns a copy of m without names.
func without[V any](m map[string]V, names []string) map[string]V {
	m = maps.Clone(m)
	for _, n := range names {
		delete(m, n)
	}
	return m
}

// withRemoved returns rs without the named resources of typ (rs's maps
// are never changed in place: they may be the last accepted set).
func withRemoved(rs resources, typ string, names []string) resources {
	switch typ {
	case resourcev3.ListenerType:
		rs.listeners = without(rs.listeners, names)
	case resourcev3.RouteType:
		rs.routes = without(rs.routes, names)
	case resourcev3.ClusterType:
		rs.clusters = without(rs.clusters, names)
	case resourcev3.EndpointType:
		rs.endpoints = without(rs.endpoints, names)
	}
	return rs
}

// decodeDelta returns rs with the update of an incremental response in:
// removed_resources dropped, resources added or replaced by name. A
// resource whose body does not name itself as the response does is an
// error, as is one without a body.
func decodeDelta(rs resources, typ string, resp *discoveryv3.DeltaDiscoveryResponse) (resources, error) {
	rs = withRemoved(rs, typ, resp.GetRemovedResources())
	var errs fieldErrs
	for i, r := range resp.GetResources() {
		path := fmt.Sprintf("resources[%d] (%q)", i, r.GetName())
		a := r.GetResource()
		if a == nil {
			errs.add(path, "no resource body (resource names, aliases and TTL-only updates are not supported)")
			continue
		}
		var m proto.Message
		var name func() string
		switch typ {
		case resourcev3.ListenerType:
			l := &listenerv3.Listener{}
			m, name = l, l.GetName
		case resourcev3.RouteType:
			x := &routev3.RouteConfiguration{}
			m, name = x, x.GetName
		case resourcev3.ClusterType:
			x := &clusterv3.Cluster{}
			m, name = x, x.GetName
		case resourcev3.EndpointType:
			x := &endpointv3.ClusterLoadAssignment{}
			m, name = x, x.GetClusterName
		}
		if !unmarshalPath(a, m, path, &errs) {
			continue
		}
		if name() != r.GetName() {
			errs.add(path, "the resource is named %q inside", name())
			continue
		}
		switch x := m.(type) {
		case *listenerv3.Listener:
			rs.listeners[x.GetName()] = x
		case *routev3.RouteConfiguration:
			rs.routes[x.GetName()] = x
		case *clusterv3.Cluster:
			rs.clusters[x.GetName()] = x
		case *endpointv3.ClusterLoadAssignment:
			rs.endpoints[x.GetClusterName()] = x
		}
	}
	return rs, errs.err()
}

// streamErr is the error a failed Send stands for: io.EOF says the server
// ended the stream, whose status the next Recv tells (UNIMPLEMENTED, for
// one, is what auto falls back on).
func streamErr(err error, recv func() error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	if rerr := recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
		return rerr
	}
	return err
}
