package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/config"
)

func TestXDSSection(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		path, msg  string // "" : valid
	}{
		{"valid", "callers: [client]\nxds: {server: 127.0.0.1:18000, node_id: replica-1, cluster: bot}\n", "", ""},
		{"server required", "xds: {node_id: replica-1}\n", "xds.server", "server is required"},
		{"server host:port", "xds: {server: 'http://cp:18000', node_id: r}\n", "xds.server", "without a scheme"},
		{"node_id required", "xds: {server: 127.0.0.1:18000}\n", "xds.node_id", "node_id is required"},
		{"not with file routing", "xds: {server: 127.0.0.1:18000, node_id: r}\nlisteners:\n  - {name: l, address: 127.0.0.1:7000, protocol: http}\n",
			"listeners", "with xds, listeners come from the management server"},
		{"tls key pair", "xds: {server: 127.0.0.1:18000, node_id: r, tls: {cert_file: c.pem}}\n", "xds.tls.cert_file", "go together"},
		{"tls files are read", "xds: {server: 127.0.0.1:18000, node_id: r, tls: {ca_file: /nonexistent/ca.pem}}\n", "xds.tls.ca_file", "no such file"},
		{"protocols", "callers: [client]\nxds: {server: 127.0.0.1:18000, node_id: replica-1, protocol: delta}\n", "", ""},
		{"unknown protocol", "xds: {server: 127.0.0.1:18000, node_id: r, protocol: incremental}\n", "xds.protocol", "protocol is auto, delta or sotw"},
		{"unknown field", "xds: {server: 127.0.0.1:18000, node_id: r, nodeid: x}\n", "xds.nodeid", "unknown field"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Parse("hopwatch.yaml", []byte(tc.yaml))
			if tc.path == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.XDS == nil || cfg.XDS.NodeID != "replica-1" {
					t.Errorf("xds = %+v", cfg.XDS)
				}
				return
			}
			var errs config.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("err = %v", err)
			}
			for _, e := range errs {
				if e.Path == tc.path && strings.Contains(e.Msg, tc.msg) && e.Line > 0 {
					return
				}
			}
			t.Errorf("no error at %s with %q (and a line): %v", tc.path, tc.msg, err)
		})
	}
}

func TestDecodeFragment(t *testing.T) {
	var v struct {
		After string `yaml:"after"`
	}
	if err := config.DecodeFragment("meta", []byte("after: 1s\n"), &v); err != nil || v.After != "1s" {
		t.Fatalf("DecodeFragment = %v, %+v", err, v)
	}
	err := config.DecodeFragment("meta", []byte("aftr: 1s\n"), &v)
	if err == nil || !strings.Contains(err.Error(), `meta:1:1: aftr: unknown field "aftr"`) {
		t.Errorf("unknown field: %v", err)
	}
}
