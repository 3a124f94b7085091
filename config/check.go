package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/hopwatch/hopwatch/internal/tlsfile"
	"github.com/hopwatch/hopwatch/routes"
)

// check holds the rules that span more than routes.Spec: the admin server,
// telemetry and conversation sections. It reports in routes.FieldError
// form so that Parse places these errors exactly like routes.Validate's.
func check(c *Config) []routes.FieldError {
	var errs []routes.FieldError
	errs = append(errs, checkAdmin(c)...)
	for path, msg := range c.Telemetry.Validate() {
		errs = append(errs, routes.FieldError{Path: "telemetry." + path, Msg: msg})
	}
	for path, msg := range c.AccessLog.Validate() {
		errs = append(errs, routes.FieldError{Path: "access_log." + path, Msg: msg})
	}
	if c.AccessLog.OTLP && c.Telemetry.Tracing.OTLP == nil {
		errs = append(errs, routes.FieldError{Path: "access_log.otlp",
			Msg: "records go to the OTLP collector of telemetry.tracing.otlp, which is not configured"})
	}
	for path, msg := range c.GenAI.Validate() {
		errs = append(errs, routes.FieldError{Path: "genai." + path, Msg: msg})
	}
	errs = append(errs, checkConversation(c)...)
	errs = append(errs, checkTLSFiles(c)...)
	errs = append(errs, checkXDS(c)...)
	return errs
}

// checkTLSFiles reads the files that the listeners' and upstreams' tls
// blocks name, with the loader the proxy uses, so that a missing,
// unreadable or malformed file is an error at its line in `proxy -check`
// and on reload (which then keeps the running configuration) rather than
// a failure when the listener starts. Paths are relative to the working
// directory. Fields left empty are routes.Validate's to report.
func checkTLSFiles(c *Config) []routes.FieldError {
	var errs []routes.FieldError
	add := func(p string, err error) {
		var fe *tlsfile.Error
		if errors.As(err, &fe) {
			errs = append(errs, routes.FieldError{Path: p + "." + fe.Field, Msg: fe.Error()})
		}
	}
	pair := func(p, cert, key string) {
		if cert != "" && key != "" {
			_, err := tlsfile.KeyPair(cert, key)
			add(p, err)
		}
	}
	for i, l := range c.Listeners {
		if l.TLS == nil {
			continue
		}
		p := fmt.Sprintf("listeners[%d].tls", i)
		pair(p, l.TLS.CertFile, l.TLS.KeyFile)
		if l.TLS.ClientCAFile != "" {
			_, err := tlsfile.CertPool("client_ca_file", l.TLS.ClientCAFile)
			add(p, err)
		}
	}
	for i, u := range c.Upstreams {
		if u.TLS == nil {
			continue
		}
		p := fmt.Sprintf("upstreams[%d].tls", i)
		pair(p, u.TLS.CertFile, u.TLS.KeyFile)
		if u.TLS.CAFile != "" {
			_, err := tlsfile.CertPool("ca_file", u.TLS.CAFile)
			add(p, err)
		}
	}
	if x := c.XDS; x != nil && x.TLS != nil {
		pair("xds.tls", x.TLS.CertFile, x.TLS.KeyFile)
		if x.TLS.CAFile != "" {
			_, err := tlsfile.CertPool("ca_file", x.TLS.CAFile)
			add("xds.tls", err)
		}
	}
	return errs
}

// checkConversation validates the conversation section and that its entry
// routes are routes of this file.
func checkConversation(c *Config) []routes.FieldError {
	conv := c.Conversation
	if conv == nil {
		return nil
	}
	var errs []routes.FieldError
	for path, msg := range conv.Validate() {
		errs = append(errs, routes.FieldError{Path: "conversation." + path, Msg: msg})
	}
	if conv.Events.OTLP && c.Telemetry.Tracing.OTLP == nil {
		errs = append(errs, routes.FieldError{Path: "conversation.events.otlp",
			Msg: "events go to the OTLP collector of telemetry.tracing.otlp, which is not configured"})
	}
	known := make(map[string]bool, len(c.Routes))
	for _, r := range c.Routes {
		known[r.Name] = true
	}
	for i, name := range conv.EntryRoutes {
		if !known[name] {
			errs = append(errs, routes.FieldError{Path: fmt.Sprintf("conversation.entry_routes[%d]", i),
				Msg: fmt.Sprintf("unknown route %q: an entry route must be one of routes[].name", name)})
		}
	}
	return errs
}

func checkAdmin(c *Config) []routes.FieldError {
	addr, written := c.Admin.Address, c.Admin.Address != ""
	if !written {
		addr = DefaultAdminAddress
	}
	const path = "admin.address"
	if err := routes.CheckListenAddress(addr); err != nil {
		return []routes.FieldError{{Path: path, Msg: err.Error()}}
	}
	var errs []routes.FieldError
	for i, h := range c.Admin.AllowedHosts {
		if !isHostName(h) {
			errs = append(errs, routes.FieldError{Path: fmt.Sprintf("admin.allowed_hosts[%d]", i), Msg: fmt.Sprintf(
				"invalid host name %q: write the name only, without scheme or port, e.g. hopwatch.monitoring.svc (IP addresses and localhost are always allowed)", h)})
		}
	}
	if host, _, _ := net.SplitHostPort(addr); !c.Admin.AllowRemote && !isLoopback(host) {
		errs = append(errs, routes.FieldError{Path: path, Msg: fmt.Sprintf(
			"%s is not a loopback address; the admin server exposes config and traces, so set admin.allow_remote: true to serve it beyond this host", addr)})
	}
	for i, l := range c.Listeners {
		if routes.CheckListenAddress(l.Address) != nil || !routes.AddressesClash(addr, l.Address) {
			continue
		}
		if written {
			errs = append(errs, routes.FieldError{Path: path, Msg: fmt.Sprintf(
				"address %s clashes with listener %q (listeners[%d], %s)", addr, l.Name, i, l.Address)})
		} else {
			// Nothing was written under admin, so point at the line that
			// was: the listener that collides with the default.
			errs = append(errs, routes.FieldError{Path: fmt.Sprintf("listeners[%d].address", i), Msg: fmt.Sprintf(
				"address %s clashes with the admin server (default admin.address %s); move the listener or set admin.address", l.Address, addr)})
		}
	}
	return errs
}

// isLoopback accepts "localhost" by name, as RFC 6761 §6.3 reserves it for
// loopback, and any loopback IP literal.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// isHostName accepts a DNS name as it appears in a Host header: labels of
// letters, digits, '-' and '_', separated by dots, an optional final dot.
func isHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
