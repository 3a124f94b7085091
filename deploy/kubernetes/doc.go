// Package kubernetes holds no code: its directory holds hopwatch's
// Kubernetes manifests (a kustomize base, overlays, and the sidecar
// component), and its tests render every overlay with kustomize's library
// and check the objects as the API server and a running hopwatch would.
//
// It sits outside the request path and must never be imported.
package kubernetes
