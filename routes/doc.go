// Package routes holds the routing configuration as written (listeners,
// callers, routes, upstreams), its validation, and the compiled, immutable
// Table that the proxy consults for every request.
//
// It sits second on the request path: listener → routes.Table.Match → hop →
// resilience → upstream. It does no I/O, reads no clock and keeps no metrics,
// so a Table can be built completely before a reload swaps it in, and thrown
// away if the new file is invalid.
//
// A Table matches strings as they are forwarded; it never decodes or
// normalises a path. The listener first refuses, with CheckPath and
// CheckGRPCMethod, any path that an upstream's own decoding could turn into
// another one, so that a prefix match cannot be escaped.
package routes
