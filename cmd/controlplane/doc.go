// Command controlplane serves a fleet YAML file (hopwatch's routing
// schema: listeners, routes, upstreams, callers) as xDS over ADS (state of
// the world and delta), with go-control-plane's snapshot cache and server,
// to hopwatch replicas
// (xds: in their file), Envoy, and proxyless grpc-go clients (xds:///
// targets with a bootstrap file), so that a service may call through
// hopwatch or directly on the same routes. Every valid change of the file
// (written, replaced, or SIGHUP) is published as a new snapshot version;
// an invalid one is logged and the last good snapshot keeps serving.
//
// It holds no proxy logic: xds.Build does the mapping.
package main
