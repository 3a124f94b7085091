package routes

import (
	"strings"
	"testing"
	"time"
)

func TestValidateDiscovery(t *testing.T) {
	type want struct{ path, msg string }
	for _, tc := range []struct {
		name   string
		mutate func(u *Upstream)
		want   []want
	}{
		{"dns discovery of names", func(u *Upstream) {
			u.Discovery = DiscoveryDNS
			u.Endpoints = []string{"nlu.bot.svc.cluster.local:7101", "127.0.0.1:7102"}
			u.DNSRefresh = 5 * time.Second
		}, nil},
		{"one dns endpoint by prefix", func(u *Upstream) {
			u.Endpoints = []string{"dns:///nlu.bot.svc:7101", "127.0.0.1:7102"}
		}, nil},
		{"unknown discovery", func(u *Upstream) { u.Discovery = "consul" },
			[]want{{"upstreams[0].discovery", `unknown discovery "consul"`}}},
		{"negative refresh", func(u *Upstream) {
			u.Discovery = DiscoveryDNS
			u.Endpoints = []string{"nlu:1"}
			u.DNSRefresh = -time.Second
		},
			[]want{{"upstreams[0].dns_refresh", "must not be negative"}}},
		{"refresh without dns endpoints", func(u *Upstream) { u.DNSRefresh = time.Second },
			[]want{{"upstreams[0].dns_refresh", "no endpoint is resolved by DNS"}}},
		{"refresh with only IP literals", func(u *Upstream) { u.Discovery = DiscoveryDNS; u.DNSRefresh = time.Second },
			[]want{{"upstreams[0].dns_refresh", "no endpoint is resolved by DNS"}}},
		{"prefix without port", func(u *Upstream) { u.Endpoints = []string{"dns:///nlu"} },
			[]want{{"upstreams[0].endpoints[0]", `after dns:///: invalid endpoint "nlu"`}}},
		{"other scheme", func(u *Upstream) { u.Endpoints = []string{"xds:///nlu:1"} },
			[]want{{"upstreams[0].endpoints[0]", "without a scheme"}}},
		{"tls with two hosts needs server_name", func(u *Upstream) {
			u.Discovery = DiscoveryDNS
			u.Endpoints = []string{"a.bot:443", "b.bot:443"}
			u.TLS = &UpstreamTLS{}
		}, []want{{"upstreams[0].tls.server_name", "2 different hosts"}}},
		{"tls with two hosts and server_name", func(u *Upstream) {
			u.Discovery = DiscoveryDNS
			u.Endpoints = []string{"a.bot:443", "b.bot:443"}
			u.TLS = &UpstreamTLS{ServerName: "bot"}
		}, nil},
		{"tls with one host", func(u *Upstream) {
			u.Discovery = DiscoveryDNS
			u.Endpoints = []string{"a.bot:443", "A.bot:444"}
			u.TLS = &UpstreamTLS{}
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := specForValidate()
			tc.mutate(&s.Upstreams[0])
			got := Validate(s)
			if len(got) != len(tc.want) {
				t.Fatalf("got %d errors, want %d: %v", len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				if got[i].Path != w.path || !strings.Contains(got[i].Msg, w.msg) {
					t.Errorf("error %d = %q, want path %q with %q", i, got[i].Error(), w.path, w.msg)
				}
			}
		})
	}
}

func TestDNSEndpoint(t *testing.T) {
	for _, tc := range []struct {
		name      string
		discovery string
		ep        string
		hostport  string
		dns       bool
	}{
		{"static name", "", "nlu:7101", "nlu:7101", false},
		{"prefixed name", "", "dns:///nlu:7101", "nlu:7101", true},
		{"discovered name", DiscoveryDNS, "nlu:7101", "nlu:7101", true},
		{"discovery leaves IPv4 literal", DiscoveryDNS, "10.0.0.1:7101", "10.0.0.1:7101", false},
		{"discovery leaves IPv6 literal", DiscoveryDNS, "[fd00::1]:7101", "[fd00::1]:7101", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &Upstream{Discovery: tc.discovery}
			hp, dns := u.DNSEndpoint(tc.ep)
			if hp != tc.hostport || dns != tc.dns {
				t.Errorf("DNSEndpoint(%q) = %q, %v; want %q, %v", tc.ep, hp, dns, tc.hostport, tc.dns)
			}
		})
	}
}
