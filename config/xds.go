package config

import (
	"fmt"
	"reflect"

	"github.com/hopwatch/hopwatch/routes"
)

// XDS makes an xDS management server the source of the listeners, routes
// and upstreams (over ADS, incremental or state of the world, see
// Protocol). The file then keeps
// admin, telemetry, callers, replay, conversation, access_log and genai;
// it must not also list listeners, routes or upstreams.
type XDS struct {
	// Server is the management server's host:port. Required.
	Server string `yaml:"server"`
	// NodeID identifies this replica to the server (node.id). Required.
	NodeID string `yaml:"node_id"`
	// Cluster is the replica's service cluster (node.cluster), which
	// control planes commonly key their snapshots on (empty: none).
	Cluster string `yaml:"cluster"`
	// TLS connects to the server over TLS (nil: cleartext, for a server
	// on the same host or inside a mesh).
	TLS *routes.UpstreamTLS `yaml:"tls"`
	// Protocol is the ADS variant: "delta" (incremental: only changed
	// resources travel, removals by name), "sotw" (state of the world:
	// every resource of a type in each response) or "auto" (empty:
	// XDSProtocolAuto).
	Protocol string `yaml:"protocol"`
}

// ADS variants (xds.protocol).
const (
	XDSProtocolSotW  = "sotw"
	XDSProtocolDelta = "delta"
	// XDSProtocolAuto tries delta on every (re)connect and falls back to
	// state of the world for that stream when the server answers
	// UNIMPLEMENTED (a server without DeltaAggregatedResources).
	XDSProtocolAuto = "auto"
)

// checkXDS checks the xds section.
func checkXDS(c *Config) []routes.FieldError {
	x := c.XDS
	if x == nil {
		return nil
	}
	var errs []routes.FieldError
	add := func(path, format string, args ...any) {
		errs = append(errs, routes.FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if x.Server == "" {
		add("xds.server", "server is required: the management server's host:port")
	} else if err := routes.CheckEndpoint(x.Server); err != nil {
		add("xds.server", "%v", err)
	}
	if x.NodeID == "" {
		add("xds.node_id", "node_id is required: the name this replica has for the management server")
	}
	switch x.Protocol {
	case "", XDSProtocolAuto, XDSProtocolSotW, XDSProtocolDelta:
	default:
		add("xds.protocol", "%q: protocol is auto, delta or sotw", x.Protocol)
	}
	if x.TLS != nil {
		if (x.TLS.CertFile == "") != (x.TLS.KeyFile == "") {
			add("xds.tls.cert_file", "cert_file and key_file go together (the client certificate and its key)")
		}
		if x.TLS.InsecureSkipVerify && (x.TLS.CAFile != "" || x.TLS.ServerName != "") {
			add("xds.tls.insecure_skip_verify", "insecure_skip_verify ignores ca_file and server_name: remove one of them")
		}
	}
	for _, f := range []struct {
		path  string
		empty bool
	}{
		{"listeners", len(c.Listeners) == 0},
		{"routes", len(c.Routes) == 0},
		{"upstreams", len(c.Upstreams) == 0},
	} {
		if !f.empty {
			add(f.path, "with xds, %s come from the management server: remove them from the file", f.path)
		}
	}
	return errs
}

// DecodeFragment decodes data, a YAML (or JSON) document, into v strictly,
// as the file's sections are decoded: unknown fields, wrong types and bad
// durations are errors located by field path. It is for configuration that
// arrives by other ways than the file (xDS resource metadata); name is
// what the errors are reported against.
func DecodeFragment(name string, data []byte, v any) error {
	root, errs := parseDocument(name, data)
	if root == nil {
		return errs
	}
	d := newDecoder(name)
	d.decode(root, reflect.ValueOf(v).Elem(), "")
	errs = append(errs, d.errs...)
	if len(errs) > 0 {
		sortErrors(errs)
		return errs
	}
	return nil
}
