// Package xds makes hopwatch an xDS client: it subscribes to a management
// server over ADS for listeners, route
// configurations, clusters and cluster load assignments, translates them
// into a routes.Spec, and hands each complete, valid one to the proxy,
// which applies it like a reload (a new generation, drains). An update
// that does not translate or validate is NACKed with the same field-path
// messages a file gets, and the last good configuration keeps serving.
//
// ADS comes in two variants (xds.protocol): state of the world, where a
// response holds every resource of its type, and delta (incremental),
// where it holds the changed ones and names the removed ones, and a
// reconnecting client says which versions it has so that only what
// changed meanwhile travels. Both feed the same translation and apply
// path. auto tries delta and falls back when the server answers
// UNIMPLEMENTED.
//
// It sits beside config/, before the request path: it decides what the
// proxy's next configuration is, never how a request is forwarded. It is
// the only package besides cmd/controlplane that imports go-control-plane.
package xds
