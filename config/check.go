package config

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/hopwatch/hopwatch/routes"
)

// check holds the rules that span more than routes.Spec: the admin server
// and the sections not implemented yet. It reports in routes.FieldError
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
	for path, msg := range c.GenAI.Validate() {
		errs = append(errs, routes.FieldError{Path: "genai." + path, Msg: msg})
	}
	if c.Conversation != nil {
		errs = append(errs, routes.FieldError{Path: "conversation", Msg: "not supported yet"})
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
