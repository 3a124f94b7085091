package routes

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// DNSEndpoint reports whether endpoint ep of u is found by DNS discovery,
// and the host:port to resolve (or to dial, when it is not). An endpoint is
// resolved when it carries DNSEndpointPrefix, or when the upstream has
// discovery: dns and its host is a name (an IP literal is its own answer).
func (u *Upstream) DNSEndpoint(ep string) (hostport string, dns bool) {
	if rest, ok := strings.CutPrefix(ep, DNSEndpointPrefix); ok {
		return rest, true
	}
	if u.Discovery != DiscoveryDNS {
		return ep, false
	}
	host, _, err := net.SplitHostPort(ep)
	if err != nil {
		return ep, false
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ep, false
	}
	return ep, true
}

// UsesDNS reports whether any endpoint of u is found by DNS discovery.
func (u *Upstream) UsesDNS() bool {
	for _, ep := range u.Endpoints {
		if _, dns := u.DNSEndpoint(ep); dns {
			return true
		}
	}
	return false
}

// discovery checks an upstream's discovery settings and its DNS endpoints
// as a whole (each endpoint's syntax is checked with the others).
func (v *validator) discovery(p string, u *Upstream) {
	switch u.Discovery {
	case "", DiscoveryDNS:
	default:
		v.errorf(p+".discovery", "unknown discovery %q (want dns, or leave it out for static endpoints)", u.Discovery)
		return
	}
	dns := u.UsesDNS()
	switch {
	case u.DNSRefresh < 0:
		v.errorf(p+".dns_refresh", "must not be negative (0 means the default, %s)", DefaultDNSRefresh)
	case u.DNSRefresh > 0 && !dns:
		v.errorf(p+".dns_refresh", "no endpoint is resolved by DNS: write discovery: dns, or a %shost:port endpoint", DNSEndpointPrefix)
	}
	if !dns || !u.UsesTLS() || (u.TLS != nil && (u.TLS.ServerName != "" || u.TLS.InsecureSkipVerify)) {
		return
	}
	// A resolved endpoint is dialed by address, so the name its
	// certificate must carry is the host as written. One transport
	// serves the upstream with one name to verify: with several hosts,
	// which one is meant must be written.
	hosts := map[string]bool{}
	for _, ep := range u.Endpoints {
		hp, _ := u.DNSEndpoint(ep)
		if h, _, err := net.SplitHostPort(hp); err == nil {
			hosts[strings.ToLower(h)] = true
		}
	}
	if len(hosts) > 1 {
		v.errorf(p+".tls.server_name", "the endpoints name %d different hosts and DNS discovery dials them by address: write the name their certificates carry", len(hosts))
	}
}

// DNSServerName is the name to verify the certificates of u's endpoints
// against when they are dialed by resolved address: tls.server_name when
// written, else the host of the first DNS endpoint (validation makes sure
// it is the only host), else "" (verify against the address dialed).
func (u *Upstream) DNSServerName() string {
	if u.TLS != nil && u.TLS.ServerName != "" {
		return u.TLS.ServerName
	}
	for _, ep := range u.Endpoints {
		if hp, dns := u.DNSEndpoint(ep); dns {
			h, _, _ := net.SplitHostPort(hp)
			return h
		}
	}
	return ""
}

// endpointSyntax checks one endpoint as written, the DNS prefix included.
func (u *Upstream) endpointSyntax(ep string) error {
	hp, _ := u.DNSEndpoint(ep)
	if err := checkEndpoint(hp); err != nil {
		if hp != ep {
			return fmt.Errorf("after %s: %w", DNSEndpointPrefix, err)
		}
		return err
	}
	return nil
}

// CheckEndpoint checks a host:port to connect to, as endpoints are
// checked (for addresses outside the routing spec, such as an xDS server).
func CheckEndpoint(ep string) error { return checkEndpoint(ep) }
