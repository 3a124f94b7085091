package proxy_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// dnsServer is an authoritative DNS server on loopback whose answers the
// test changes: the A records of its names, a TTL, and a failure mode.
type dnsServer struct {
	addr string

	mu      sync.Mutex
	records map[string][]netip.Addr // fqdn → addresses
	ttl     uint32
	rcode   int // dns.RcodeSuccess, or the failure to answer with
	queries atomic.Int64
	byName  map[string]int // queries per name
}

func startDNS(t testing.TB) *dnsServer {
	t.Helper()
	d := &dnsServer{records: map[string][]netip.Addr{}, rcode: dns.RcodeSuccess, byName: map[string]int{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.addr = pc.LocalAddr().String()
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: d, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return d
}

func (d *dnsServer) set(name string, ttl uint32, addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	d.records[dns.Fqdn(name)] = as
	d.ttl = ttl
}

func (d *dnsServer) fail(rcode int) {
	d.mu.Lock()
	d.rcode = rcode
	d.mu.Unlock()
}

func (d *dnsServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	d.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, q := range r.Question {
		d.byName[strings.ToLower(q.Name)]++
	}
	if d.rcode != dns.RcodeSuccess {
		m.Rcode = d.rcode
		w.WriteMsg(m)
		return
	}
	for _, q := range r.Question {
		addrs, ok := d.records[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
			continue
		}
		for _, a := range addrs {
			hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: d.ttl}
			switch {
			case q.Qtype == dns.TypeA && a.Is4():
				hdr.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
			case q.Qtype == dns.TypeAAAA && a.Is6():
				hdr.Rrtype = dns.TypeAAAA
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
			}
		}
	}
	w.WriteMsg(m)
}

// goResolver is the SystemResolver as production builds it, its queries
// sent to the test server: the path without TTLs.
func goResolver(d *dnsServer) proxy.Resolver {
	return proxy.SystemResolver{Resolver: &net.Resolver{PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "udp", d.addr)
		}}}
}

// ttlResolver asks the test server for A and AAAA records itself and
// reports their TTL, as a resolver that sees TTLs does.
type ttlResolver struct{ addr string }

func (r ttlResolver) Resolve(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	var addrs []netip.Addr
	ttl := uint32(0)
	c := new(dns.Client)
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(host), qt)
		in, _, err := c.ExchangeContext(ctx, m, r.addr)
		if err != nil {
			return nil, 0, err
		}
		if in.Rcode != dns.RcodeSuccess {
			return nil, 0, fmt.Errorf("%s: %s", host, dns.RcodeToString[in.Rcode])
		}
		for _, rr := range in.Answer {
			if ttl == 0 || rr.Header().Ttl < ttl {
				ttl = rr.Header().Ttl
			}
			switch rr := rr.(type) {
			case *dns.A:
				a, _ := netip.AddrFromSlice(rr.A)
				addrs = append(addrs, a)
			case *dns.AAAA:
				a, _ := netip.AddrFromSlice(rr.AAAA)
				addrs = append(addrs, a)
			}
		}
	}
	return addrs, time.Duration(ttl) * time.Second, nil
}

// loopbackPort finds a port free on 127.0.0.1, .2 and .3 at once (a DNS
// name's addresses share the endpoint's port) and returns listeners there.
func loopbackPort(t testing.TB, n int) (string, []net.Listener) {
	t.Helper()
	for range 20 {
		first, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(first.Addr().String())
		lns := []net.Listener{first}
		for i := 2; i <= n; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%s", i, port))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == n {
			return port, lns
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatal("no port free on 127.0.0.1..3")
	return "", nil
}

// dnsBackends are n HTTP or gRPC servers on 127.0.0.1..n, one port.
type dnsBackends struct {
	port  string
	hits  []atomic.Int64
	hosts sync.Map // Host / :authority values seen
	// health are the gRPC backends' health services (their Watch
	// streams are long calls).
	health []*health.Server
	// held is closed when a request to backend 0's /hold arrives; it is
	// answered once release is closed.
	held, release chan struct{}
}

func startDNSBackends(t *testing.T, n int, grpcProto bool) *dnsBackends {
	t.Helper()
	port, lns := loopbackPort(t, n)
	b := &dnsBackends{port: port, hits: make([]atomic.Int64, n), held: make(chan struct{}), release: make(chan struct{})}
	for i, ln := range lns {
		if grpcProto {
			srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				b.hits[i].Add(1)
				md, _ := metadata.FromIncomingContext(ctx)
				for _, a := range md.Get(":authority") {
					b.hosts.Store(a, true)
				}
				return h(ctx, req)
			}))
			hs := health.NewServer()
			b.health = append(b.health, hs)
			healthpb.RegisterHealthServer(srv, hs)
			go srv.Serve(ln)
			t.Cleanup(srv.Stop)
			continue
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.hits[i].Add(1)
			b.hosts.Store(r.Host, true)
			if i == 0 && r.URL.Path == "/hold" {
				close(b.held)
				<-b.release
			}
			fmt.Fprintf(w, "backend %d", i)
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	return b
}

func (b *dnsBackends) counts() []int64 {
	out := make([]int64, len(b.hits))
	for i := range b.hits {
		out[i] = b.hits[i].Load()
	}
	return out
}

// TestDNSDiscovery: every address of a DNS endpoint is an endpoint of its
// own; traffic follows addresses the server adds and removes, without a
// failed call; a request in flight to a removed address finishes; failed
// resolutions keep the last good set and are counted.
func TestDNSDiscovery(t *testing.T) {
	for _, tc := range []struct {
		name     string
		resolver func(d *dnsServer) proxy.Resolver
		grpc     bool
	}{
		{"http upstream, system resolver", goResolver, false},
		{"http upstream, resolver with TTLs", func(d *dnsServer) proxy.Resolver { return ttlResolver{d.addr} }, false},
		{"grpc upstream, system resolver", goResolver, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDNS(t)
			b := startDNSBackends(t, 3, tc.grpc)
			d.set("svc.test", 0, "127.0.0.1")

			reg := prometheus.NewRegistry()
			tel, err := telemetry.New(telemetry.Options{Registry: reg})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { tel.Shutdown(context.Background()) })
			hostport := "svc.test:" + b.port
			lproto, uproto := routes.ListenerHTTP, routes.UpstreamHTTP
			if tc.grpc {
				lproto, uproto = routes.ListenerGRPC, routes.UpstreamGRPC
			}
			spec := &routes.Spec{
				Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: lproto}},
				Routes:    []routes.Route{{Name: "all", Listener: "in", Upstream: "svc"}},
				// Round robin: every address gets its share whatever its
				// latency. With p2c_ewma one slow response (a loaded
				// machine) can keep an address out of the traffic for the
				// rest of the test, and the waits below for traffic on
				// every address then time out.
				Upstreams: []routes.Upstream{{Name: "svc", Protocol: uproto, Endpoints: []string{hostport},
					Discovery: routes.DiscoveryDNS, DNSRefresh: 30 * time.Millisecond, Balance: routes.BalanceRoundRobin}},
			}
			p := proxy.New(proxy.Options{Telemetry: tel, Resolver: tc.resolver(d)})
			t.Cleanup(func() { shutdown(t, p) })
			if err := p.Apply(spec); err != nil {
				t.Fatal(err)
			}

			call := callerFor(t, p, tc.grpc)
			// Steady traffic through every change; none of it may fail.
			var failed atomic.Int64
			var firstErr atomic.Value
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						if err := call(); err != nil {
							failed.Add(1)
							firstErr.CompareAndSwap(nil, err)
						}
					}
				}()
			}
			defer func() {
				close(stop)
				wg.Wait()
				if n := failed.Load(); n > 0 {
					t.Errorf("%d calls failed during DNS changes; first: %v", n, firstErr.Load())
				}
			}()

			testkit.WaitFor(t, "traffic on the first address", func() bool { return b.hits[0].Load() > 20 })

			d.set("svc.test", 0, "127.0.0.1", "127.0.0.2", "127.0.0.3")
			base := b.counts()
			testkit.WaitFor(t, "traffic on the added addresses", func() bool {
				c := b.counts()
				return c[1] > base[1]+20 && c[2] > base[2]+20
			})

			d.set("svc.test", 0, "127.0.0.2", "127.0.0.3")
			// Once the removal is live, the removed address gets no call.
			testkit.WaitFor(t, "the removal to be applied", func() bool {
				before := b.hits[0].Load()
				c := b.counts()
				time.Sleep(150 * time.Millisecond)
				after := b.counts()
				return before == b.hits[0].Load() && after[1] > c[1] && after[2] > c[2]
			})

			failedBefore := dnsErrors(t, reg)
			for _, rcode := range []int{dns.RcodeServerFailure, dns.RcodeNameError} {
				d.fail(rcode)
				q := d.queries.Load()
				testkit.WaitFor(t, "failed lookups", func() bool { return d.queries.Load() > q+4 })
				d.fail(dns.RcodeSuccess)
			}
			d.set("svc.test", 0) // an empty answer, too, keeps the last set
			q := d.queries.Load()
			testkit.WaitFor(t, "empty answers", func() bool { return d.queries.Load() > q+4 })
			if got := dnsErrors(t, reg); got <= failedBefore {
				t.Errorf("hopwatch_dns_resolutions_total{result=error} = %v, did not grow from %v", got, failedBefore)
			}
			c := b.counts()
			testkit.WaitFor(t, "traffic on the last good set", func() bool {
				n := b.counts()
				return n[1] > c[1]+20 && n[2] > c[2]+20 && n[0] == c[0]
			})

			var authorities []string
			b.hosts.Range(func(k, _ any) bool { authorities = append(authorities, k.(string)); return true })
			if len(authorities) != 1 || authorities[0] != hostport {
				t.Errorf("upstreams saw Host/:authority %q, want only %q (the endpoint as written)", authorities, hostport)
			}
		})
	}
}

// dnsErrors is hopwatch_dns_resolutions_total{upstream="svc",result="error"}.
func dnsErrors(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "hopwatch_dns_resolutions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["upstream"] == "svc" && labels["result"] == "error" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// callerFor returns one call through the proxy's listener "in".
func callerFor(t *testing.T, p *proxy.Proxy, grpcProto bool) func() error {
	t.Helper()
	if grpcProto {
		cc, err := grpc.NewClient(p.Addr("in").String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		hc := healthpb.NewHealthClient(cc)
		return func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}
	}
	client := newHTTPClient(t, protoHTTP1)
	url := proxyURL(p, "in") + "/x"
	return func() error {
		resp, err := client.Get(url)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
}

// startDNSProxy serves listener "in" (grpc or http) with one route to
// the upstream "svc", whose one endpoint is svc.test on the backends' port.
func startDNSProxy(t *testing.T, b *dnsBackends, res proxy.Resolver, grpcProto bool, refresh time.Duration) *proxy.Proxy {
	t.Helper()
	lproto, uproto := routes.ListenerHTTP, routes.UpstreamHTTP
	if grpcProto {
		lproto, uproto = routes.ListenerGRPC, routes.UpstreamGRPC
	}
	p := proxy.New(proxy.Options{Resolver: res})
	t.Cleanup(func() { shutdown(t, p) })
	if err := p.Apply(&routes.Spec{
		Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: lproto}},
		Routes:    []routes.Route{{Name: "all", Listener: "in", Upstream: "svc"}},
		Upstreams: []routes.Upstream{{Name: "svc", Protocol: uproto, Endpoints: []string{"dns:///svc.test:" + b.port},
			DNSRefresh: refresh}},
	}); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDNSDiscoveryDrains: calls in flight to an address that leaves the
// DNS answer finish there (its connection is not closed under them),
// while new calls go to the new addresses.
func TestDNSDiscoveryDrains(t *testing.T) {
	for _, tc := range []struct {
		name string
		grpc bool
	}{
		{"http request", false},
		{"grpc stream", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := startDNS(t)
			b := startDNSBackends(t, 2, tc.grpc)
			d.set("svc.test", 0, "127.0.0.1")
			p := startDNSProxy(t, b, goResolver(d), tc.grpc, 30*time.Millisecond)
			call := callerFor(t, p, tc.grpc)

			// The long call: an HTTP request backend 0 holds, or a gRPC
			// health Watch stream.
			longDone := make(chan error, 1)
			var next func() error
			if tc.grpc {
				cc, err := grpc.NewClient(p.Addr("in").String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Close()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				b.health[0].SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
				w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := w.Recv(); err != nil {
					t.Fatal(err)
				}
				next = func() error {
					r, err := w.Recv()
					if err == nil && r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
						err = fmt.Errorf("status %v", r.Status)
					}
					return err
				}
			} else {
				client := newHTTPClient(t, protoHTTP1)
				go func() {
					resp, err := client.Get(proxyURL(p, "in") + "/hold")
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode != http.StatusOK {
							err = fmt.Errorf("status %d", resp.StatusCode)
						}
					}
					longDone <- err
				}()
				<-b.held
			}

			d.set("svc.test", 0, "127.0.0.2")
			testkit.WaitFor(t, "traffic on the new address", func() bool {
				if err := call(); err != nil {
					t.Fatalf("call during the change: %v", err)
				}
				return b.hits[1].Load() > 5
			})
			before := b.hits[0].Load()
			for range 20 {
				if err := call(); err != nil {
					t.Fatal(err)
				}
			}
			if got := b.hits[0].Load(); got != before {
				t.Errorf("the removed address got %d new calls", got-before)
			}

			// The long call is still alive on the removed address.
			if tc.grpc {
				b.health[0].SetServingStatus("svc", healthpb.HealthCheckResponse_NOT_SERVING)
				if err := next(); err != nil {
					t.Errorf("stream to the removed address after the change: %v", err)
				}
				return
			}
			close(b.release)
			if err := <-longDone; err != nil {
				t.Errorf("request in flight to the removed address: %v", err)
			}
		})
	}
}

// TestDNSDiscoveryHonoursTTL: with a resolver that reports TTLs, an answer
// is re-resolved when its TTL ends even if dns_refresh is far off; the
// system resolver, which sees no TTL, waits for dns_refresh.
func TestDNSDiscoveryHonoursTTL(t *testing.T) {
	d := startDNS(t)
	b := startDNSBackends(t, 2, false)
	d.set("svc.test", 1, "127.0.0.1") // TTL 1s
	withTTL := startDNSProxy(t, b, ttlResolver{d.addr}, false, time.Hour)
	without := startDNSProxy(t, b, goResolver(d), false, time.Hour)
	callTTL, callNoTTL := callerFor(t, withTTL, false), callerFor(t, without, false)
	d.set("svc.test", 1, "127.0.0.2")
	start := time.Now()
	testkit.WaitFor(t, "the TTL to end and the new address to be used", func() bool {
		if err := callTTL(); err != nil {
			t.Fatal(err)
		}
		return b.hits[1].Load() > 0
	})
	t.Logf("new address in use %v after the change (TTL 1s, dns_refresh 1h)", time.Since(start).Round(time.Millisecond))
	before := b.hits[1].Load()
	for range 10 {
		if err := callNoTTL(); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.hits[1].Load(); got != before {
		t.Errorf("without TTLs the answer was re-resolved before dns_refresh (%d calls on the new address)", got-before)
	}
}

// TestDNSDiscoveryFollowsReloads: a reload that drops the DNS endpoint
// stops its resolution, and a refused configuration leaves the running
// one's resolution alone.
func TestDNSDiscoveryFollowsReloads(t *testing.T) {
	d := startDNS(t)
	b := startDNSBackends(t, 2, false)
	d.set("svc.test", 0, "127.0.0.1")
	p := startDNSProxy(t, b, goResolver(d), false, 20*time.Millisecond)
	call := callerFor(t, p, false)
	q := d.queries.Load()
	testkit.WaitFor(t, "re-resolution", func() bool { return d.queries.Load() > q+2 })

	// Refused (its new listener's address is taken): the watch it
	// started stops, and the running configuration keeps following DNS.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	bad := &routes.Spec{
		Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP},
			{Name: "more", Address: taken.Addr().String(), Protocol: routes.ListenerHTTP}},
		Routes: []routes.Route{{Name: "all", Listener: "in", Upstream: "svc"}, {Name: "more", Listener: "more", Upstream: "other"}},
		Upstreams: []routes.Upstream{{Name: "svc", Protocol: routes.UpstreamHTTP, Endpoints: []string{"dns:///svc.test:" + b.port},
			DNSRefresh: 20 * time.Millisecond},
			{Name: "other", Protocol: routes.UpstreamHTTP, Endpoints: []string{"dns:///other.test:1"}, DNSRefresh: 20 * time.Millisecond}},
	}
	if err := p.Apply(bad); err == nil {
		t.Fatal("a spec with a taken listener address was applied")
	}
	otherQueries := func() int {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.byName["other.test."]
	}
	if otherQueries() == 0 {
		t.Fatal("the refused configuration's DNS endpoint was never resolved")
	}
	time.Sleep(50 * time.Millisecond)
	before := otherQueries()
	time.Sleep(200 * time.Millisecond)
	if n := otherQueries() - before; n > 0 {
		t.Errorf("%d queries for the refused configuration's name after it was refused", n)
	}
	d.set("svc.test", 0, "127.0.0.2")
	testkit.WaitFor(t, "the running configuration to follow DNS", func() bool {
		if err := call(); err != nil {
			t.Fatal(err)
		}
		return b.hits[1].Load() > 0
	})

	// Static now: no more lookups.
	if err := p.Apply(&routes.Spec{
		Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}},
		Routes:    []routes.Route{{Name: "all", Listener: "in", Upstream: "svc"}},
		Upstreams: []routes.Upstream{{Name: "svc", Protocol: routes.UpstreamHTTP, Endpoints: []string{"127.0.0.1:" + b.port}}},
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a lookup under way may finish
	q = d.queries.Load()
	time.Sleep(200 * time.Millisecond)
	if n := d.queries.Load() - q; n > 0 {
		t.Errorf("%d DNS queries after the DNS endpoint was removed", n)
	}
}

// TestDNSEndpointsSeries: hopwatch_dns_endpoints counts the addresses an
// upstream resolves to, and goes away with the upstream's DNS endpoints.
func TestDNSEndpointsSeries(t *testing.T) {
	d := startDNS(t)
	d.set("svc.test", 0, "127.0.0.1", "127.0.0.2")
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	p := proxy.New(proxy.Options{Telemetry: tel, Resolver: goResolver(d)})
	defer shutdown(t, p)
	spec := func(ep string) *routes.Spec {
		return &routes.Spec{
			Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}},
			Routes:    []routes.Route{{Name: "all", Listener: "in", Upstream: "svc"}},
			Upstreams: []routes.Upstream{{Name: "svc", Protocol: routes.UpstreamHTTP, Endpoints: []string{ep}}},
		}
	}
	series := func() (float64, bool) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "hopwatch_dns_endpoints" {
				for _, m := range mf.GetMetric() {
					return m.GetGauge().GetValue(), true
				}
			}
		}
		return 0, false
	}
	if err := p.Apply(spec("dns:///svc.test:1")); err != nil {
		t.Fatal(err)
	}
	if n, ok := series(); !ok || n != 2 {
		t.Errorf("hopwatch_dns_endpoints = %v (present %v), want 2", n, ok)
	}
	if err := p.Apply(spec("127.0.0.1:1")); err != nil {
		t.Fatal(err)
	}
	if n, ok := series(); ok {
		t.Errorf("hopwatch_dns_endpoints still %v after the DNS endpoint went away", n)
	}
}

// TestDNSDiscoveryTLS: resolved endpoints are dialed by address and their
// certificates verified against the name as written (grpc and https
// upstreams), not against the address.
func TestDNSDiscoveryTLS(t *testing.T) {
	d := startDNS(t)
	d.set("svc.test", 0, "127.0.0.1")
	ca := testkit.NewCA(t, "test CA")
	pair := ca.Issue(t, testkit.Leaf{Serial: 7, CommonName: "svc", DNSNames: []string{"svc.test"}})
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	serverConf := &tls.Config{Certificates: []tls.Certificate{cert}}
	caFile := testkit.WriteFile(t, t.TempDir(), "ca.crt", ca.PEM)
	for _, tc := range []struct {
		name string
		grpc bool
	}{
		{"grpc upstream", true},
		{"https upstream", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var addr string
			lproto, uproto := routes.ListenerHTTP, routes.UpstreamHTTP
			if tc.grpc {
				addr = startTLSGRPCUpstream(t, serverConf)
				lproto, uproto = routes.ListenerGRPC, routes.UpstreamGRPC
			} else {
				addr = startTLSHTTPUpstream(t, serverConf, false)
			}
			_, port, _ := net.SplitHostPort(addr)
			p := proxy.New(proxy.Options{Resolver: goResolver(d)})
			defer shutdown(t, p)
			if err := p.Apply(&routes.Spec{
				Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: lproto}},
				Routes:    []routes.Route{{Name: "all", Listener: "in", Upstream: "svc"}},
				Upstreams: []routes.Upstream{{Name: "svc", Protocol: uproto, Endpoints: []string{"dns:///svc.test:" + port},
					TLS: &routes.UpstreamTLS{CAFile: caFile}}},
			}); err != nil {
				t.Fatal(err)
			}
			if tc.grpc {
				cc, err := grpc.NewClient(p.Addr("in").String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
				if err != nil {
					t.Fatal(err)
				}
				defer cc.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				out := new(wrapperspb.BytesValue)
				if err := cc.Invoke(ctx, "/"+echoService+"/Unary", wrapperspb.Bytes([]byte("x")), out); err != nil {
					t.Fatalf("call through a TLS DNS endpoint: %v", err)
				}
				return
			}
			if err := callerFor(t, p, false)(); err != nil {
				t.Fatalf("request through a TLS DNS endpoint: %v", err)
			}
		})
	}
}

// barrierResolver answers a name only once every one of want lookups has
// started (or its context ends first, which it records): lookups made one
// after another never all start, and fail on their deadline.
type barrierResolver struct {
	want    int
	started chan string
	mu      sync.Mutex
	n       int
	all     chan struct{}
	errs    []error // how lookups that did not get an answer ended
}

func newBarrierResolver(want int) *barrierResolver {
	return &barrierResolver{want: want, started: make(chan string, 64), all: make(chan struct{})}
}

func (b *barrierResolver) Resolve(ctx context.Context, host string) ([]netip.Addr, time.Duration, error) {
	b.mu.Lock()
	b.n++
	if b.n == b.want {
		close(b.all)
	}
	b.mu.Unlock()
	b.started <- host
	select {
	case <-b.all:
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, 0, nil
	case <-ctx.Done():
		b.mu.Lock()
		b.errs = append(b.errs, ctx.Err())
		b.mu.Unlock()
		return nil, 0, ctx.Err()
	}
}

func dnsSpec(tlsCA string, upstreams map[string][]string) *routes.Spec {
	s := &routes.Spec{Listeners: []routes.Listener{{Name: "in", Address: "127.0.0.1:0", Protocol: routes.ListenerHTTP}}}
	for name, eps := range upstreams {
		u := routes.Upstream{Name: name, Protocol: routes.UpstreamHTTP, Endpoints: eps}
		if tlsCA != "" {
			u.TLS = &routes.UpstreamTLS{CAFile: tlsCA, ServerName: "svc.test"}
		}
		s.Upstreams = append(s.Upstreams, u)
		s.Routes = append(s.Routes, routes.Route{Name: name, Listener: "in", Upstream: name, Match: routes.Match{PathPrefix: "/" + name + "/"}})
	}
	return s
}

func dnsEndpointsSeries(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "hopwatch_dns_endpoints" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	return out
}

// TestDNSFirstLookupsConcurrent: the first lookups of the names an apply
// adds (of several upstreams, and several names of one) run at once, so
// that a slow or black-holed resolver holds the apply (a reload, the xDS
// stream) for one lookup timeout, not one per name: every lookup has
// started before any is answered.
func TestDNSFirstLookupsConcurrent(t *testing.T) {
	res := newBarrierResolver(3)
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	p := proxy.New(proxy.Options{Telemetry: tel, Resolver: res})
	defer shutdown(t, p)
	if err := p.Apply(dnsSpec("", map[string][]string{
		"a": {"dns:///a1.test:80", "dns:///a2.test:80"},
		"b": {"dns:///b.test:80"},
	})); err != nil {
		t.Fatal(err)
	}
	if got := dnsEndpointsSeries(t, reg); got["a"] != 2 || got["b"] != 1 {
		t.Errorf("hopwatch_dns_endpoints = %v, want a: 2, b: 1 (lookups that timed out: %v)", got, res.errs)
	}
}

// TestDNSFirstLookupsShutdown: Shutdown cuts short the first lookups of
// an apply in progress (it does not wait for their deadline); the apply
// fails with ErrClosed and leaves no hopwatch_dns_endpoints series.
func TestDNSFirstLookupsShutdown(t *testing.T) {
	res := newBarrierResolver(1000) // never answers
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	p := proxy.New(proxy.Options{Telemetry: tel, Resolver: res})
	applied := make(chan error, 1)
	go func() { applied <- p.Apply(dnsSpec("", map[string][]string{"a": {"dns:///a.test:80"}})) }()
	<-res.started
	shutdown(t, p)
	if err := <-applied; !errors.Is(err, proxy.ErrClosed) {
		t.Errorf("apply = %v, want ErrClosed", err)
	}
	res.mu.Lock()
	errs := slices.Clone(res.errs)
	res.mu.Unlock()
	if len(errs) != 1 || !errors.Is(errs[0], context.Canceled) {
		t.Errorf("the lookup ended with %v, want context.Canceled (cut short by Shutdown)", errs)
	}
	if got := dnsEndpointsSeries(t, reg); len(got) != 0 {
		t.Errorf("hopwatch_dns_endpoints = %v after a refused apply", got)
	}
}

// TestDNSRefusedApplyForgets: an apply refused after its first lookups
// (here: an upstream's CA file does not load) leaves no
// hopwatch_dns_endpoints series for the upstreams it alone resolved, and
// leaves those of the running configuration as they were (not counting
// the names the refused apply added to a running upstream).
func TestDNSRefusedApplyForgets(t *testing.T) {
	d := startDNS(t)
	d.set("a.test", 0, "127.0.0.1")
	d.set("b.test", 0, "127.0.0.1", "127.0.0.2")
	reg := prometheus.NewRegistry()
	tel, err := telemetry.New(telemetry.Options{Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background())
	p := proxy.New(proxy.Options{Telemetry: tel, Resolver: goResolver(d)})
	defer shutdown(t, p)
	if err := p.Apply(dnsSpec("", map[string][]string{"a": {"dns:///a.test:80"}})); err != nil {
		t.Fatal(err)
	}
	bad := dnsSpec("/nonexistent/ca.pem", map[string][]string{"a": {"dns:///a.test:80", "dns:///b.test:80"}, "b": {"dns:///b.test:80"}})
	if err := p.Apply(bad); err == nil {
		t.Fatal("an upstream without its CA file was applied")
	} else if !strings.Contains(err.Error(), "ca.pem") {
		t.Fatalf("refused for another reason than the CA file: %v", err)
	}
	if got := dnsEndpointsSeries(t, reg); len(got) != 1 || got["a"] != 1 {
		t.Errorf("hopwatch_dns_endpoints = %v, want only the running a: 1", got)
	}
}
