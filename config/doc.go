// Package config loads hopwatch's YAML configuration file and watches it for
// changes.
//
// It sits beside the request path, not on it: cmd/ calls Load at startup and
// on every reload, hands the routing part (routes.Spec) to the proxy, and
// keeps serving the old configuration when a new file is invalid. Imports
// point one way: cmd/ → config/ → routes/.
//
// Decoding is strict. The YAML is parsed into a node tree and decoded by a
// small reflective decoder rather than yaml.Unmarshal, because every problem
// must come back at once and carry file:line:col and the field path:
// unknown fields, wrong kinds, bad scalars, durations without a unit,
// duplicate keys, several documents in one file, and alias expansion beyond
// a fixed budget (billion laughs). The decoder records where each field path
// was written, so the semantic errors of routes.Validate, which only know
// paths, are reported at the right line too.
//
// Watch follows the file's directory rather than the file, since editors
// and Kubernetes ConfigMaps replace files by rename or symlink swap, and a
// watch on the old inode would go quiet.
package config
