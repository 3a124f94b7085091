// Package xds makes hopwatch an xDS client: it subscribes to a management
// server over ADS (state of the world) for listeners, route
// configurations, clusters and cluster load assignments, translates them
// into a routes.Spec, and hands each complete, valid one to the proxy,
// which applies it like a reload (a new generation, drains). An update
// that does not translate or validate is NACKed with the same field-path
// messages a file gets, and the last good configuration keeps serving.
//
// It sits beside config/, before the request path: it decides what the
// proxy's next configuration is, never how a request is forwarded. It is
// the only package besides cmd/controlplane that imports go-control-plane.
package xds
