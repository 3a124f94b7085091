package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/internal/tlsfile"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// DefaultAdminAddress is where the admin server listens when admin.address
// is not written. It is loopback because the admin server exposes the
// configuration and recorded traces.
const DefaultAdminAddress = "127.0.0.1:9901"

// Config is the whole file as written. Zero values are usable defaults;
// Load fills the documented ones in so that /config shows effective values.
type Config struct {
	Admin Admin `yaml:"admin"`
	// Telemetry configures tracing, export and the built-in trace store.
	// Metrics are always on.
	Telemetry telemetry.Config `yaml:"telemetry"`
	// Spec is the routing part: listeners, callers, routes, upstreams.
	routes.Spec `yaml:",inline"`
	// Conversation turns entry-route requests into conversation signals
	// (turns, sessions, repeats, abandonment); absent or null: off.
	Conversation *conversation.Config `yaml:"conversation"`
	// AccessLog writes one JSON line per request (off unless an output
	// is written).
	AccessLog telemetry.AccessLogConfig `yaml:"access_log"`
	// GenAI holds the model names and prices of routes with genai set.
	GenAI telemetry.GenAIConfig `yaml:"genai"`
	// XDS, when written, takes listeners, routes and upstreams from an
	// xDS management server instead of this file.
	XDS *XDS `yaml:"xds"`
}

// Admin configures the admin server (/metrics, /config, /ui, ...).
type Admin struct {
	// Address is host:port (default DefaultAdminAddress). It must be a
	// loopback address unless AllowRemote is set.
	Address string `yaml:"address"`
	// AllowRemote permits a non-loopback Address, e.g. 0.0.0.0:9901 for a
	// Prometheus scraping from another pod. It is a separate switch so that
	// exposing config and traces is always a written decision.
	AllowRemote bool `yaml:"allow_remote"`
	// AllowedHosts lists host names (no port) that requests to the admin
	// server may carry in Host, besides IP literals and localhost, which
	// are always accepted; any other Host gets 403, which defeats DNS
	// rebinding. Name here what scrapers and browsers use to reach it,
	// e.g. hopwatch.monitoring.svc.
	AllowedHosts []string `yaml:"allowed_hosts"`
}

// Section stands for a top-level section whose feature is not implemented
// yet. The decoder accepts any content for it without looking inside, and
// validation rejects it when present. An explicit null counts as absent.
type Section struct{}

// ErrNotRegular is returned by Load for a path that is not a regular file
// (a FIFO, a device, a directory).
var ErrNotRegular = tlsfile.ErrNotRegular

// Load reads and parses the file at path. Problems with the content come
// back as Errors, all of them, each with file:line:col and field path;
// problems reading the file come back wrapped (errors.Is(err,
// fs.ErrNotExist) works).
//
// Only a regular file (or a symlink to one, as Kubernetes mounts them) is
// read. A FIFO at the path would block the open, and then every read, until
// some writer came along: a reload, /config and shutdown all waited on it.
// So the open does not block (O_NONBLOCK, which regular files ignore) and
// the opened file is checked (tlsfile.Read, which also caps the size at
// 4 MiB: real files are a few KiB, and a wrong path, a log or a device, is
// not read into memory whole).
func Load(path string) (*Config, error) {
	data, err := tlsfile.Read(path) // the same bounded, FIFO-safe read as every file hopwatch loads
	switch {
	case errors.Is(err, tlsfile.ErrTooLarge):
		return nil, Errors{{File: path, Msg: "file is " + err.Error()}}
	case err != nil:
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse decodes and validates data; name is the file name used in errors.
// On any problem it returns nil and Errors holding every problem found:
// decoding errors and validation errors together, sorted by line.
// Validation runs on whatever did decode, so one typo does not hide the
// rest; validation errors on a field that already failed to decode are
// dropped as repeats.
func Parse(name string, data []byte) (*Config, error) {
	root, errs := parseDocument(name, data)
	if root == nil {
		return nil, errs
	}
	d := newDecoder(name)
	var c Config
	d.decode(root, reflect.ValueOf(&c).Elem(), "")
	errs = append(errs, d.errs...)
	if !d.aborted {
		// An aborted decode met a hostile or absurd document; validating
		// the fragment would only bury the one error that matters.
		for _, fe := range append(routes.Validate(&c.Spec), check(&c)...) {
			if d.decodeFailedAt(fe.Path) {
				continue
			}
			p := d.locate(fe.Path)
			errs = append(errs, Error{File: name, Line: p.line, Col: p.col, Path: fe.Path, Msg: fe.Msg})
		}
	}
	if len(errs) > 0 {
		sortErrors(errs)
		return nil, errs
	}
	applyDefaults(&c)
	return &c, nil
}

// parseDocument parses data into the one YAML document it must hold. A nil
// node means there is nothing to decode; otherwise errs may still report
// extra documents.
func parseDocument(name string, data []byte) (*yaml.Node, Errors) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := parseNext(dec, &doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, Errors{{File: name, Msg: "config is empty"}}
		}
		return nil, Errors{yamlError(name, err)}
	}
	if isEmptyDocument(&doc) {
		return nil, Errors{{File: name, Line: doc.Line, Msg: "config is empty"}}
	}
	root := doc.Content[0]

	var errs Errors
	for {
		var extra yaml.Node
		err := parseNext(dec, &extra)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, yamlError(name, err))
			break
		}
		// A trailing "---" with nothing after it is harmless; a second
		// document with content would be silently ignored, so refuse it.
		if isEmptyDocument(&extra) {
			continue
		}
		errs = append(errs, Error{File: name, Line: extra.Line, Col: extra.Column,
			Msg: "multiple YAML documents in one file: hopwatch reads exactly one; remove the '---' separator or split the file"})
		break
	}
	return root, errs
}

// parseNext reads one document. The parser is third-party code fed
// arbitrary bytes; should it panic, that must become a config error rather
// than end a process that is reloading a bad file while serving.
func parseNext(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: parser failure: %v", r)
		}
	}()
	return dec.Decode(n)
}

func isEmptyDocument(doc *yaml.Node) bool {
	if len(doc.Content) == 0 {
		return true
	}
	n := doc.Content[0]
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// yamlError turns the parser's "yaml: line 3: did not find expected key"
// into a positioned Error.
func yamlError(file string, err error) Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, tail, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil {
				line, msg = n, tail
				if isParserProblem(msg) {
					line++
				}
			}
		}
	}
	return Error{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

// isParserProblem reports the messages of yaml.v3's parser stage. yaml.v3
// numbers lines from 0 for these and from 1 for scanner errors (see
// parser.fail in its decode.go, which adds 1 for scanner errors only), so
// these need one added. For errors inside a collection the line is where
// the collection starts, e.g. an unclosed '['.
func isParserProblem(msg string) bool {
	switch msg {
	case "did not find expected ',' or ']'",
		"did not find expected ',' or '}'",
		"did not find expected '-' indicator",
		"did not find expected <document start>",
		"did not find expected <stream-start>",
		"did not find expected key",
		"did not find expected node content",
		"found duplicate %TAG directive",
		"found duplicate %YAML directive",
		"found incompatible YAML document",
		"found undefined tag handle":
		return true
	}
	return false
}

// applyDefaults writes the documented defaults into a valid config, so that
// what /config shows is what runs. Components still treat zero as the
// default, so a Spec built in code works the same.
func applyDefaults(c *Config) {
	if c.Admin.Address == "" {
		c.Admin.Address = DefaultAdminAddress
	}
	if c.Conversation != nil {
		conv := c.Conversation.WithDefaults()
		c.Conversation = &conv
	}
	if l := &c.AccessLog; l.Output != "" {
		if l.QueueSize == 0 {
			l.QueueSize = telemetry.DefaultAccessLogQueue
		}
		if l.SampleRatio == nil {
			all := 1.0
			l.SampleRatio = &all
		}
	}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if l.MaxMessageBytes == 0 {
			l.MaxMessageBytes = routes.DefaultMaxMessageBytes
		}
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.Balance == "" {
			u.Balance = routes.BalanceP2CEWMA
		}
		if u.DialTimeout == 0 {
			u.DialTimeout = routes.DefaultDialTimeout
		}
		if u.MaxMessageBytes == 0 {
			u.MaxMessageBytes = routes.DefaultMaxMessageBytes
		}
	}
}
