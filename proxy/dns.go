package proxy

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// Resolver looks up host names for DNS discovery (upstreams with
// discovery: dns, or dns:/// endpoints).
type Resolver interface {
	// Resolve returns the A and AAAA addresses of host, and how long the
	// answer may be kept (0: the resolver does not say).
	Resolve(ctx context.Context, host string) (addrs []netip.Addr, ttl time.Duration, err error)
}

// SystemResolver resolves with a net.Resolver (nil: net.DefaultResolver):
// the system's configuration, /etc/hosts and search domains included (a
// Kubernetes pod's short service names need the search list). It does not
// see TTLs, so names are re-resolved every dns_refresh.
type SystemResolver struct{ Resolver *net.Resolver }

// Resolve implements Resolver.
func (s SystemResolver) Resolve(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	r := s.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	return addrs, 0, err
}

const (
	// dnsLookupTimeout bounds one resolution of one name.
	dnsLookupTimeout = 5 * time.Second
	// dnsFailureRetry is the most a failed resolution waits before it is
	// tried again (dns_refresh when shorter); meanwhile the last good set
	// keeps serving.
	dnsFailureRetry = 5 * time.Second
)

// discovery keeps the DNS endpoints of the applied configuration resolved:
// one watch per upstream with DNS endpoints, which re-resolves its names
// every dns_refresh (sooner when a TTL says so) and, when an answer
// changes, has the proxy build a new generation over the new endpoint set
// (rediscover). A failed resolution keeps the last good addresses.
type discovery struct {
	res     Resolver
	tel     *telemetry.Telemetry
	log     *slog.Logger
	changed func() // called, without locks held, when an answer changed

	mu      sync.Mutex // guards the fields below
	watches map[string]*dnsWatch
	closed  bool
	wg      sync.WaitGroup // watch loops
}

// dnsWatch resolves the DNS hosts of one upstream.
type dnsWatch struct {
	key      string // identity: upstream, hosts, refresh
	upstream string
	hosts    []string
	refresh  time.Duration
	cancel   context.CancelFunc

	mu    sync.Mutex // guards addrs
	addrs map[string][]netip.Addr
}

func newDiscovery(res Resolver, tel *telemetry.Telemetry, log *slog.Logger, changed func()) *discovery {
	if res == nil {
		res = SystemResolver{}
	}
	return &discovery{res: res, tel: tel, log: log, changed: changed, watches: map[string]*dnsWatch{}}
}

// dnsHosts lists the distinct hosts of u's DNS endpoints, in file order.
func dnsHosts(u *routes.Upstream) []string {
	var hosts []string
	for _, ep := range u.Endpoints {
		hp, dns := u.DNSEndpoint(ep)
		if !dns {
			continue
		}
		h, _, err := net.SplitHostPort(hp)
		if err == nil && !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

func watchKey(u *routes.Upstream, hosts []string) string {
	return fmt.Sprintf("%s\x00%s\x00%d", u.Name, strings.Join(hosts, "\x00"), u.DNSRefresh)
}

// prepare starts the watches spec needs that are not running yet, each
// after its first resolution (so that the generation about to be built has
// addresses), and returns them for abort.
func (d *discovery) prepare(spec *routes.Spec) []*dnsWatch {
	var added []*dnsWatch
	for i := range spec.Upstreams {
		u := &spec.Upstreams[i]
		hosts := dnsHosts(u)
		if len(hosts) == 0 {
			continue
		}
		key := watchKey(u, hosts)
		d.mu.Lock()
		_, running := d.watches[key]
		closed := d.closed
		d.mu.Unlock()
		if running || closed {
			continue
		}
		w := &dnsWatch{key: key, upstream: u.Name, hosts: hosts,
			refresh: cmp.Or(u.DNSRefresh, routes.DefaultDNSRefresh), addrs: map[string][]netip.Addr{}}
		ctx, cancel := context.WithCancel(context.Background())
		w.cancel = cancel
		_, next := d.resolve(ctx, w)
		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			cancel()
			continue
		}
		d.watches[key] = w
		d.wg.Add(1)
		d.mu.Unlock()
		go d.run(ctx, w, next)
		added = append(added, w)
	}
	return added
}

// commit stops the watches spec no longer needs.
func (d *discovery) commit(spec *routes.Spec) {
	keep := map[string]bool{}
	for i := range spec.Upstreams {
		u := &spec.Upstreams[i]
		if hosts := dnsHosts(u); len(hosts) > 0 {
			keep[watchKey(u, hosts)] = true
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var gone []string
	for key, w := range d.watches {
		if !keep[key] {
			w.cancel()
			delete(d.watches, key)
			gone = append(gone, w.upstream)
		}
	}
	for _, name := range gone {
		if !d.watchingLocked(name) {
			d.tel.DNSForget(name)
		}
	}
}

// watchingLocked reports whether a watch resolves the upstream's names.
func (d *discovery) watchingLocked(upstream string) bool {
	for _, w := range d.watches {
		if w.upstream == upstream {
			return true
		}
	}
	return false
}

// abort stops the watches a configuration that was not applied started.
func (d *discovery) abort(added []*dnsWatch) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, w := range added {
		w.cancel()
		if d.watches[w.key] == w {
			delete(d.watches, w.key)
		}
	}
}

// close stops every watch; wait waits for their loops to end. They are
// apart so that close can run under the proxy's lock, which a loop may be
// waiting for.
func (d *discovery) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for key, w := range d.watches {
		w.cancel()
		delete(d.watches, key)
	}
}

func (d *discovery) wait() { d.wg.Wait() }

// endpoints returns the endpoint set of every upstream of spec: endpoints
// as written, and in place of each DNS endpoint the last good addresses of
// its host (none before the first good answer), in a stable order so that
// an unchanged answer gives an unchanged set.
func (d *discovery) endpoints(spec *routes.Spec) map[string][]resolvedEndpoint {
	out := make(map[string][]resolvedEndpoint, len(spec.Upstreams))
	for i := range spec.Upstreams {
		u := &spec.Upstreams[i]
		hosts := dnsHosts(u)
		if len(hosts) == 0 {
			out[u.Name] = staticEndpoints(*u)
			continue
		}
		d.mu.Lock()
		w := d.watches[watchKey(u, hosts)]
		d.mu.Unlock()
		var eps []resolvedEndpoint
		seen := map[string]bool{}
		add := func(re resolvedEndpoint) {
			if !seen[re.addr] {
				seen[re.addr] = true
				eps = append(eps, re)
			}
		}
		for _, ep := range u.Endpoints {
			hp, dns := u.DNSEndpoint(ep)
			if !dns {
				add(resolvedEndpoint{addr: hp})
				continue
			}
			if w == nil {
				continue
			}
			host, port, _ := net.SplitHostPort(hp)
			w.mu.Lock()
			addrs := w.addrs[host]
			w.mu.Unlock()
			for _, a := range addrs {
				add(resolvedEndpoint{addr: net.JoinHostPort(a.String(), port), authority: hp})
			}
		}
		out[u.Name] = eps
	}
	return out
}

// run re-resolves w's hosts until ctx ends.
func (d *discovery) run(ctx context.Context, w *dnsWatch, next time.Duration) {
	defer d.wg.Done()
	t := time.NewTimer(next)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, after := d.resolve(ctx, w)
		if ctx.Err() != nil {
			return
		}
		if changed {
			d.changed()
		}
		t.Reset(after)
	}
}

// resolve looks up every host of w once, keeps the answers that succeeded
// (a failure, or an empty answer, keeps the host's last good addresses),
// and returns whether any host's addresses changed and when to resolve
// next: dns_refresh, or sooner when an answer's TTL ends sooner (not below
// MinDNSRefresh), or after a failure.
func (d *discovery) resolve(ctx context.Context, w *dnsWatch) (changed bool, next time.Duration) {
	next = w.refresh
	total := 0
	for _, h := range w.hosts {
		lctx, cancel := context.WithTimeout(ctx, dnsLookupTimeout)
		addrs, ttl, err := d.res.Resolve(lctx, h)
		cancel()
		if ctx.Err() != nil {
			return false, next
		}
		addrs = normalizeAddrs(addrs)
		if err == nil && len(addrs) == 0 {
			err = fmt.Errorf("no A or AAAA records")
		}
		w.mu.Lock()
		if err != nil {
			total += len(w.addrs[h])
			w.mu.Unlock()
			d.tel.DNSResolution(w.upstream, false)
			d.log.Warn("DNS discovery failed, keeping the last good addresses", "upstream", w.upstream, "host", h, "error", err)
			next = min(next, dnsFailureRetry)
			continue
		}
		if !slices.Equal(w.addrs[h], addrs) {
			changed = true
			w.addrs[h] = addrs
		}
		total += len(addrs)
		w.mu.Unlock()
		d.tel.DNSResolution(w.upstream, true)
		if ttl > 0 {
			next = min(next, max(ttl, routes.MinDNSRefresh))
		}
	}
	if ctx.Err() == nil { // a stopped watch leaves no series behind
		d.tel.DNSEndpoints(w.upstream, total)
	}
	return changed, next
}

// normalizeAddrs sorts and de-duplicates addresses, IPv4-mapped IPv6
// addresses unmapped, so that the same answer in another order is the
// same set.
func normalizeAddrs(addrs []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if a.IsValid() {
			out = append(out, a.Unmap().WithZone(""))
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}
