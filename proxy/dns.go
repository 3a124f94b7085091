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

	// ctx ends with close: every watch and first resolution derives from it.
	ctx    context.Context
	cancel context.CancelFunc

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
	ctx      context.Context // ends when the watch stops
	cancel   context.CancelFunc

	mu    sync.Mutex // guards addrs
	addrs map[string][]netip.Addr
}

func newDiscovery(res Resolver, tel *telemetry.Telemetry, log *slog.Logger, changed func()) *discovery {
	if res == nil {
		res = SystemResolver{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &discovery{res: res, tel: tel, log: log, changed: changed, ctx: ctx, cancel: cancel, watches: map[string]*dnsWatch{}}
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
// addresses), and returns them for abort. The first resolutions of all
// new names run at once under one deadline (dnsLookupTimeout), and close
// (Shutdown) cuts them short: a black-holed resolver holds an apply (a
// reload, the xDS stream) for one lookup timeout at most, not one per name.
func (d *discovery) prepare(spec *routes.Spec) []*dnsWatch {
	var fresh []*dnsWatch
	d.mu.Lock()
	for i := range spec.Upstreams {
		u := &spec.Upstreams[i]
		hosts := dnsHosts(u)
		if len(hosts) == 0 {
			continue
		}
		key := watchKey(u, hosts)
		if _, running := d.watches[key]; running || d.closed {
			continue
		}
		w := &dnsWatch{key: key, upstream: u.Name, hosts: hosts,
			refresh: cmp.Or(u.DNSRefresh, routes.DefaultDNSRefresh), addrs: map[string][]netip.Addr{}}
		w.ctx, w.cancel = context.WithCancel(d.ctx)
		fresh = append(fresh, w)
	}
	d.mu.Unlock()
	if len(fresh) == 0 {
		return nil
	}
	lookups, cancel := context.WithTimeout(d.ctx, dnsLookupTimeout)
	defer cancel()
	nexts := make([]time.Duration, len(fresh))
	var wg sync.WaitGroup
	for i, w := range fresh {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, nexts[i], _ = d.resolve(w.ctx, lookups, w)
		}()
	}
	wg.Wait()
	var added []*dnsWatch
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, w := range fresh {
		if d.closed {
			w.cancel()
			continue
		}
		// Its hopwatch_dns_endpoints is written on commit: until then
		// the series is the running configuration's.
		d.watches[w.key] = w
		d.wg.Add(1)
		go d.run(w, nexts[i])
		added = append(added, w)
	}
	return added
}

// commit stops the watches spec no longer needs, and exports the address
// counts of those it keeps.
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
	for _, w := range d.watches {
		d.tel.DNSEndpoints(w.upstream, w.total())
	}
}

// total is how many addresses w's hosts have now (last good answers).
func (w *dnsWatch) total() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, h := range w.hosts {
		n += len(w.addrs[h])
	}
	return n
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

// abort stops the watches a configuration that was not applied started,
// and drops the series of their upstreams unless a running watch still
// resolves them (it sets them again on its next answer).
func (d *discovery) abort(added []*dnsWatch) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, w := range added {
		w.cancel()
		if d.watches[w.key] == w {
			delete(d.watches, w.key)
		}
	}
	for _, w := range added {
		if !d.watchingLocked(w.upstream) {
			d.tel.DNSForget(w.upstream)
		}
	}
}

// close stops every watch; wait waits for their loops to end. They are
// apart so that close can run under the proxy's lock, which a loop may be
// waiting for.
func (d *discovery) close() {
	d.cancel() // first resolutions in progress too
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

// run re-resolves w's hosts until the watch stops.
func (d *discovery) run(w *dnsWatch, next time.Duration) {
	defer d.wg.Done()
	t := time.NewTimer(next)
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		}
		changed, after, total := d.resolve(w.ctx, w.ctx, w)
		if !d.publish(w, total) {
			return
		}
		if changed {
			d.changed()
		}
		t.Reset(after)
	}
}

// publish exports the address count of a running watch; false when the
// watch has stopped, which leaves no series behind (commit and abort
// drop it under the same lock).
func (d *discovery) publish(w *dnsWatch, total int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.watches[w.key] != w || w.ctx.Err() != nil {
		return false
	}
	d.tel.DNSEndpoints(w.upstream, total)
	return true
}

// resolve looks up every host of w once, all at once, each lookup bounded
// by dnsLookupTimeout within lookups; keeps the answers that succeeded (a
// failure, or an empty answer, keeps the host's last good addresses); and
// returns whether any host's addresses changed, when to resolve next
// (dns_refresh, or sooner when an answer's TTL ends sooner (not below
// MinDNSRefresh), or after a failure), and how many addresses w has now.
// Nothing is counted once stop has ended (the watch was stopped).
func (d *discovery) resolve(stop, lookups context.Context, w *dnsWatch) (changed bool, next time.Duration, total int) {
	next = w.refresh
	type answer struct {
		addrs []netip.Addr
		ttl   time.Duration
		err   error
	}
	answers := make([]answer, len(w.hosts))
	var wg sync.WaitGroup
	for i, h := range w.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lctx, cancel := context.WithTimeout(lookups, dnsLookupTimeout)
			defer cancel()
			a := &answers[i]
			a.addrs, a.ttl, a.err = d.res.Resolve(lctx, h)
		}()
	}
	wg.Wait()
	if stop.Err() != nil {
		return false, next, 0
	}
	for i, h := range w.hosts {
		addrs, ttl, err := normalizeAddrs(answers[i].addrs), answers[i].ttl, answers[i].err
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
	return changed, next, total
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
