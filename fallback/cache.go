package fallback

import (
	"cmp"
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"

	"github.com/hopwatch/hopwatch/routes"
)

// Entry is one stored response. One shape serves both protocols: for HTTP,
// Status, Header and Body are the response's; for a unary gRPC call, Status
// is 0, Header and Trailer are the response metadata, and Body is the one
// response message, as raw bytes. Entries are shared between readers once
// stored: neither the caller of Put nor of Get may modify one.
type Entry struct {
	Status  int
	Header  map[string][]string
	Body    []byte
	Trailer map[string][]string
}

// size estimates what an entry holds in memory, for the byte bound.
func (e *Entry) size() int64 {
	n := int64(entryOverhead + len(e.Body))
	for _, m := range []map[string][]string{e.Header, e.Trailer} {
		for k, vs := range m {
			n += int64(len(k))
			for _, v := range vs {
				n += int64(len(v) + 16)
			}
		}
	}
	return n
}

// entryOverhead approximates the list element, map slot and Entry itself,
// so that many tiny entries are not free.
const entryOverhead = 256

// Key identifies a request for the cache; see KeyOf.
type Key [32]byte

// KeyOf derives the cache key of a request: SHA-256 over the route name,
// method, path (with the query: GET parameters are part of what is asked),
// body and the selected headers, each length-prefixed so that no two
// different requests can concatenate to the same input ("a"+"bc" and
// "ab"+"c" differ). headers is a flat list of name, value pairs, chosen by
// the caller (the route's fallback.cache.headers, names lowercased, several
// values joined); a header that is absent should still be passed, with an
// empty value, so that its absence is part of the key. Hashing keeps
// request bodies out of memory and keys fixed-size.
func KeyOf(route, method, path string, body []byte, headers []string) Key {
	n := 8*5 + len(route) + len(method) + len(path) + 8*len(headers)
	for _, h := range headers {
		n += len(h)
	}
	// The body comes last, so that when it is large it is hashed in place
	// rather than copied; small requests take one buffer and no hasher.
	inline := len(body) <= smallBody
	if inline {
		n += len(body)
	}
	buf := make([]byte, 0, n)
	buf = appendPart(buf, route)
	buf = appendPart(buf, method)
	buf = appendPart(buf, path)
	buf = binary.BigEndian.AppendUint64(buf, uint64(len(headers)))
	for _, h := range headers {
		buf = appendPart(buf, h)
	}
	buf = binary.BigEndian.AppendUint64(buf, uint64(len(body)))
	if inline {
		return Key(sha256.Sum256(append(buf, body...)))
	}
	d := sha256.New()
	d.Write(buf)
	d.Write(body)
	var k Key
	d.Sum(k[:0])
	return k
}

// smallBody is the largest body KeyOf copies to hash in one go.
const smallBody = 4 << 10

func appendPart(buf []byte, s string) []byte {
	buf = binary.BigEndian.AppendUint64(buf, uint64(len(s)))
	return append(buf, s...)
}

// Cache keeps the last good response per key, for answering when the
// upstream is late or down: least recently used first out, bounded by
// entries and by bytes, each entry good for a TTL. Get and Put are O(1)
// (a map into a doubly linked list). Times are passed in. Safe for
// concurrent use.
type Cache struct {
	ttl        time.Duration
	maxEntries int
	maxBytes   int64

	mu    sync.Mutex // guards everything below
	lru   list.List  // of *cacheItem; front is the most recently used
	items map[Key]*list.Element
	bytes int64
}

type cacheItem struct {
	key     Key
	entry   *Entry
	expires time.Time
	size    int64
}

// CacheOption adjusts a Cache.
type CacheOption func(*Cache)

// CacheMaxBytes bounds the estimated memory of the stored entries
// (n <= 0: routes.DefaultCacheMaxBytes).
func CacheMaxBytes(n int64) CacheOption {
	return func(c *Cache) {
		if n > 0 {
			c.maxBytes = n
		}
	}
}

// NewCache returns an empty cache. ttl <= 0 means routes.DefaultCacheTTL,
// maxEntries <= 0 routes.DefaultCacheMaxEntries; the byte bound is
// routes.DefaultCacheMaxBytes unless CacheMaxBytes says otherwise.
func NewCache(ttl time.Duration, maxEntries int, opts ...CacheOption) *Cache {
	c := &Cache{
		ttl:        cmp.Or(max(ttl, 0), routes.DefaultCacheTTL),
		maxEntries: cmp.Or(max(maxEntries, 0), routes.DefaultCacheMaxEntries),
		maxBytes:   routes.DefaultCacheMaxBytes,
		items:      make(map[Key]*list.Element),
	}
	for _, opt := range opts {
		opt(c)
	}
	return c
}

// Get returns the entry stored under k, unless it expired by now; an
// expired entry is removed. A hit makes the entry the most recently used.
func (c *Cache) Get(k Key, now time.Time) (*Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return nil, false
	}
	it := el.Value.(*cacheItem)
	if !now.Before(it.expires) {
		c.remove(el)
		return nil, false
	}
	c.lru.MoveToFront(el)
	return it.entry, true
}

// Put stores e under k until now + TTL, replacing what was there, and
// evicts least recently used entries beyond the bounds. It returns false,
// storing nothing, when e alone exceeds the byte bound; an older entry for
// k then stays, being still the last good response.
func (c *Cache) Put(k Key, e *Entry, now time.Time) bool {
	size := e.size()
	if size > c.maxBytes {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	expires := now.Add(c.ttl)
	if el, ok := c.items[k]; ok {
		it := el.Value.(*cacheItem)
		c.bytes += size - it.size
		it.entry, it.expires, it.size = e, expires, size
		c.lru.MoveToFront(el)
	} else {
		c.items[k] = c.lru.PushFront(&cacheItem{key: k, entry: e, expires: expires, size: size})
		c.bytes += size
	}
	for c.lru.Len() > c.maxEntries || c.bytes > c.maxBytes {
		c.remove(c.lru.Back())
	}
	// Expired entries at the cold end go too, so that memory follows the
	// TTL even for keys that are never asked for again.
	for el := c.lru.Back(); el != nil && !now.Before(el.Value.(*cacheItem).expires); el = c.lru.Back() {
		c.remove(el)
	}
	return true
}

func (c *Cache) remove(el *list.Element) {
	it := c.lru.Remove(el).(*cacheItem)
	delete(c.items, it.key)
	c.bytes -= it.size
}

// Len returns the number of entries, expired ones not yet removed included.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Bytes returns the estimated memory of the entries.
func (c *Cache) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}
