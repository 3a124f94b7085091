package main

import (
	"bytes"
	"embed"
	"fmt"
	"net"
	"strconv"
	"text/template"
)

//go:embed nginx.conf.tmpl haproxy.cfg.tmpl hopwatch.yaml.tmpl
var templates embed.FS

// addrs are the loopback addresses of one run: the backend's and the ones
// every proxy listens on (the same for each peer, one at a time).
type addrs struct {
	BackendGRPC, BackendHTTP string
	GRPC, HTTP, H2C          string // proxy listeners: gRPC (h2c), HTTP/1.1, h2c
	Admin, OTLP              string // hopwatch's admin server, the OTLP sink
}

// newAddrs lays the addresses out from base: base+0.. on 127.0.0.1.
func newAddrs(base int) addrs {
	at := func(i int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(base+i)) }
	return addrs{
		BackendGRPC: at(0), BackendHTTP: at(1),
		GRPC: at(2), HTTP: at(3), H2C: at(4),
		Admin: at(5), OTLP: at(6),
	}
}

// renderData is what the templates see.
type renderData struct {
	addrs
	Dir     string // the run's scratch directory
	Workers int    // worker processes (nginx) or threads (HAProxy)

	// hopwatch only.
	Variant     string
	SampleRatio float64
	Exporter    string // OTLP endpoint; empty: no exporter
	Relay       string // the gRPC listener's relay; empty: grpc-go's server
}

func render(name string, d renderData) ([]byte, error) {
	t, err := template.ParseFS(templates, name)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return nil, fmt.Errorf("render %s: %w", name, err)
	}
	return b.Bytes(), nil
}
