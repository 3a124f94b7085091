package fallback_test

import (
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/fallback"
)

// key names an entry in tests of the store itself: the Cache takes any
// Key, however derived (TestKeyBuilder covers derivation).
func key(s string) fallback.Key { return fallback.Key(sha256.Sum256([]byte(s))) }

func entry(body string) *fallback.Entry {
	return &fallback.Entry{Status: 200, Header: map[string][]string{"Content-Type": {"application/json"}}, Body: []byte(body)}
}

// cached returns which of names c holds at now. It uses Get, which
// refreshes what it finds, so it is the last thing a case does.
func cached(c *fallback.Cache, now time.Time, names ...string) []string {
	var in []string
	for _, n := range names {
		if _, ok := c.Get(key(n), now); ok {
			in = append(in, n)
		}
	}
	return in
}

func TestCacheLRU(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []string // "put x" or "get x"
		want []string // cached afterwards, of a..e
	}{
		{"evicts the oldest", []string{"put a", "put b", "put c", "put d"}, []string{"b", "c", "d"}},
		{"get refreshes", []string{"put a", "put b", "put c", "get a", "put d"}, []string{"a", "c", "d"}},
		{"put refreshes", []string{"put a", "put b", "put c", "put a", "put d"}, []string{"a", "c", "d"}},
		{"miss does not refresh", []string{"put a", "put b", "put c", "get e", "put d"}, []string{"b", "c", "d"}},
		{"evicts in order", []string{"put a", "put b", "put c", "get b", "get a", "put d", "put e"}, []string{"a", "d", "e"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			c := fallback.NewCache(fallback.CacheSettings{TTL: time.Minute, MaxEntries: 3})
			for _, op := range tc.ops {
				var verb, k string
				fmt.Sscan(op, &verb, &k)
				switch verb {
				case "put":
					c.Put(key(k), entry(k), clk.Now())
				case "get":
					c.Get(key(k), clk.Now())
				}
			}
			// Check without disturbing the order first: Len, then
			// membership (Get reorders, but nothing is put afterwards).
			if c.Len() != len(tc.want) {
				t.Errorf("Len() = %d, want %d", c.Len(), len(tc.want))
			}
			if got := cached(c, clk.Now(), "a", "b", "c", "d", "e"); !slices.Equal(got, tc.want) {
				t.Errorf("cached = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCacheTTL(t *testing.T) {
	clk := newClock()
	c := fallback.NewCache(fallback.CacheSettings{TTL: 10 * time.Second, MaxEntries: 10})
	c.Put(key("a"), entry("a1"), clk.Now())
	clk.Advance(5 * time.Second)
	c.Put(key("b"), entry("b"), clk.Now())
	clk.Advance(5*time.Second - 1)
	if e, ok := c.Get(key("a"), clk.Now()); !ok || string(e.Body) != "a1" {
		t.Fatalf("Get(a) just before its TTL = %v, %v", e, ok)
	}
	clk.Advance(1)
	if _, ok := c.Get(key("a"), clk.Now()); ok {
		t.Fatal("Get(a) at its TTL hit")
	}
	if c.Len() != 1 {
		t.Errorf("Len() = %d after a expired, want 1 (removed on Get)", c.Len())
	}
	// A refresh restarts the TTL.
	c.Put(key("b"), entry("b2"), clk.Now())
	clk.Advance(9 * time.Second)
	if e, ok := c.Get(key("b"), clk.Now()); !ok || string(e.Body) != "b2" {
		t.Errorf("Get(b) after refresh = %v, %v", e, ok)
	}
	// Expired entries at the cold end are dropped by Put too.
	clk.Advance(time.Hour)
	c.Put(key("c"), entry("c"), clk.Now())
	if c.Len() != 1 {
		t.Errorf("Len() = %d, want 1: expired entries should go on Put", c.Len())
	}
}

func TestCacheBytes(t *testing.T) {
	clk := newClock()
	big := func(n int) *fallback.Entry { return &fallback.Entry{Body: make([]byte, n)} }
	c := fallback.NewCache(fallback.CacheSettings{TTL: time.Minute, MaxEntries: 100, MaxBytes: 10_000})
	if c.Put(key("huge"), big(20_000), clk.Now()) {
		t.Error("Put of an entry above the byte bound succeeded")
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		if !c.Put(key(k), big(3000), clk.Now()) {
			t.Fatalf("Put(%s) refused", k)
		}
	}
	if got := cached(c, clk.Now(), "a", "b", "c", "d"); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Errorf("cached = %v, want [b c d] (a evicted for bytes)", got)
	}
	if c.Bytes() > 10_000 {
		t.Errorf("Bytes() = %d above the bound", c.Bytes())
	}
	// Shrinking an entry in place gives the bytes back.
	c.Put(key("b"), big(0), clk.Now())
	if c.Bytes() > 7000 {
		t.Errorf("Bytes() = %d after shrinking b", c.Bytes())
	}
	// A too-large refresh leaves the last good entry in place.
	c.Put(key("c"), big(20_000), clk.Now())
	if e, ok := c.Get(key("c"), clk.Now()); !ok || len(e.Body) != 3000 {
		t.Errorf("Get(c) after a refused refresh = %v", ok)
	}
}

func TestCacheDefaults(t *testing.T) {
	clk := newClock()
	c := fallback.NewCache(fallback.CacheSettings{TTL: 0, MaxEntries: 0})
	for i := range 10_001 {
		c.Put(key(fmt.Sprint(i)), entry(""), clk.Now())
	}
	if c.Len() != 10_000 {
		t.Errorf("Len() = %d, want the default max of 10000", c.Len())
	}
	clk.Advance(10*time.Minute - 1)
	if _, ok := c.Get(key("10000"), clk.Now()); !ok {
		t.Error("entry gone before the default TTL of 10m")
	}
	clk.Advance(1)
	if _, ok := c.Get(key("10000"), clk.Now()); ok {
		t.Error("entry alive at the default TTL of 10m")
	}
}

func TestCacheConcurrent(t *testing.T) {
	clk := newClock()
	c := fallback.NewCache(fallback.CacheSettings{TTL: time.Second, MaxEntries: 50})
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 2000 {
				k := key(fmt.Sprint((g*7 + i) % 200))
				if i%3 == 0 {
					c.Put(k, entry(fmt.Sprint(i)), clk.Now())
				} else if e, ok := c.Get(k, clk.Now()); ok && e.Status != 200 {
					t.Errorf("corrupt entry %+v", e)
				}
				if i%500 == 0 {
					clk.Advance(300 * time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	if n := c.Len(); n > 50 {
		t.Errorf("Len() = %d above max_entries 50", n)
	}
}

// reqKey derives a key the way the proxy does: route, method, path, a
// counted list of header pairs, then the body.
func reqKey(c *fallback.Cache, route, method, path, body string, headers []string) fallback.Key {
	b := c.NewKey().String(route).String(method).String(path).Int(len(headers))
	for _, h := range headers {
		b.String(h)
	}
	return b.Bytes([]byte(body)).Sum()
}

func TestKeyBuilder(t *testing.T) {
	type req struct {
		route, method, path, body string
		headers                   []string
	}
	base := req{"kb", "POST", "/kb/search?q=x", `{"q":"x"}`, []string{"x-tenant", "acme"}}
	large := strings.Repeat("x", 64<<10)
	c := fallback.NewCache(fallback.CacheSettings{TTL: time.Minute, MaxEntries: 10})
	for _, tc := range []struct {
		name string
		a, b req
		same bool
	}{
		{"identical", base, base, true},
		{"route", base, req{"kb2", base.method, base.path, base.body, base.headers}, false},
		{"method", base, req{base.route, "PUT", base.path, base.body, base.headers}, false},
		{"query", base, req{base.route, base.method, "/kb/search?q=y", base.body, base.headers}, false},
		{"body", base, req{base.route, base.method, base.path, `{"q":"y"}`, base.headers}, false},
		{"header value", base, req{base.route, base.method, base.path, base.body, []string{"x-tenant", "other"}}, false},
		{"header absent vs empty", base, req{base.route, base.method, base.path, base.body, nil}, false},
		{"parts do not run together", req{"a", "bc", "", "", nil}, req{"ab", "c", "", "", nil}, false},
		{"path into body", req{"kb", "GET", "/a", "b", nil}, req{"kb", "GET", "/ab", "", nil}, false},
		{"header pairs do not shift", req{"kb", "GET", "/", "", []string{"a", "bc"}}, req{"kb", "GET", "/", "", []string{"ab", "c"}}, false},
		{"headers vs body", req{"kb", "GET", "/", "", []string{"x"}}, req{"kb", "GET", "/", "\x00\x00\x00\x00\x00\x00\x00\x01x", nil}, false},
		{"large bodies equal", req{"kb", "POST", "/", large + "a", nil}, req{"kb", "POST", "/", large + "a", nil}, true},
		{"large bodies differ at the end", req{"kb", "POST", "/", large + "a", nil}, req{"kb", "POST", "/", large + "b", nil}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ka := reqKey(c, tc.a.route, tc.a.method, tc.a.path, tc.a.body, tc.a.headers)
			kb := reqKey(c, tc.b.route, tc.b.method, tc.b.path, tc.b.body, tc.b.headers)
			if (ka == kb) != tc.same {
				t.Errorf("keys equal = %v, want %v", ka == kb, tc.same)
			}
		})
	}
	t.Run("keyed per cache", func(t *testing.T) {
		// The same request hashes differently in another cache: a key is
		// no plain digest of its parts (which may hold a credential).
		other := fallback.NewCache(fallback.CacheSettings{TTL: time.Minute, MaxEntries: 10})
		if reqKey(c, "kb", "GET", "/", "", []string{"authorization", "Bearer s3cret"}) ==
			reqKey(other, "kb", "GET", "/", "", []string{"authorization", "Bearer s3cret"}) {
			t.Error("two caches derived the same key")
		}
		plain := sha256.Sum256([]byte("Bearer s3cret"))
		if reqKey(c, "", "", "", "Bearer s3cret", nil) == fallback.Key(plain) {
			t.Error("key is a plain SHA-256 of the secret")
		}
	})
}

func BenchmarkCacheGet(b *testing.B) {
	now := time.Now()
	c := fallback.NewCache(fallback.CacheSettings{TTL: time.Hour, MaxEntries: 10_000})
	keys := make([]fallback.Key, 1000)
	for i := range keys {
		keys[i] = key(fmt.Sprint(i))
		c.Put(keys[i], entry(`{"results":[]}`), now)
	}
	b.ReportAllocs()
	b.Run("hit", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, ok := c.Get(keys[i%len(keys)], now); !ok {
				b.Fatal("miss")
			}
			i++
		}
	})
	b.Run("hit parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				c.Get(keys[i%len(keys)], now)
				i++
			}
		})
	})
}

func BenchmarkKeyBuilder(b *testing.B) {
	headers := []string{"x-tenant", "acme", "accept-language", "en"}
	c := fallback.NewCache(fallback.CacheSettings{TTL: time.Minute, MaxEntries: 10})
	for _, size := range []int{512, 64 << 10} {
		body := strings.Repeat("x", size)
		b.Run(fmt.Sprintf("body=%d", size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				reqKey(c, "kb-search", "POST", "/kb/search?q=opening+hours", body, headers)
			}
		})
	}
}
