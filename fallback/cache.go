package fallback

import (
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"io"
	"sync"
	"time"
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
	// Vary, when not nil, makes this entry a marker rather than a
	// response: the responses to this request vary on these request
	// headers (canonical names, sorted), and each variant is stored under
	// a key derived from this one and the request's values of them
	// (HTTP Vary, RFC 9111 §4.1). Header, Body and Trailer are then empty.
	Vary []string
}

// size estimates what an entry holds in memory, for the byte bound.
func (e *Entry) size() int64 {
	n := int64(entryOverhead + len(e.Body))
	for _, v := range e.Vary {
		n += int64(len(v) + 16)
	}
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

// Key identifies a request for the cache; see Cache.NewKey.
type Key [32]byte

// KeyBuilder derives one cache key: HMAC-SHA256, under the cache's own
// random secret, over the parts written in order, each length-prefixed so
// that no two different part lists hash the same input ("a","bc" and
// "ab","c" differ). Keying the hash matters because the parts may include
// credentials (a route that names Authorization in its cache key): the key
// must not be a plain digest of a secret that anyone holding the process
// memory could test guesses against. Hashing also keeps request bodies out
// of memory and keys fixed-size.
type KeyBuilder struct {
	h   hash.Hash
	len [8]byte
}

// NewKey starts a key for this cache. Keys of one cache mean nothing to
// another (each has its own secret), so a fresh cache never answers from
// what another stored.
func (c *Cache) NewKey() *KeyBuilder {
	return &KeyBuilder{h: hmac.New(sha256.New, c.secret[:])}
}

// String adds one part.
func (b *KeyBuilder) String(s string) *KeyBuilder {
	binary.BigEndian.PutUint64(b.len[:], uint64(len(s)))
	b.h.Write(b.len[:])
	io.WriteString(b.h, s)
	return b
}

// Bytes adds one part.
func (b *KeyBuilder) Bytes(p []byte) *KeyBuilder {
	binary.BigEndian.PutUint64(b.len[:], uint64(len(p)))
	b.h.Write(b.len[:])
	b.h.Write(p)
	return b
}

// Int adds a count (how many parts follow, for lists of varying length).
func (b *KeyBuilder) Int(n int) *KeyBuilder {
	binary.BigEndian.PutUint64(b.len[:], uint64(n))
	b.h.Write(b.len[:])
	return b
}

// Sum returns the key.
func (b *KeyBuilder) Sum() Key {
	var k Key
	b.h.Sum(k[:0])
	return k
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

	secret [32]byte // keys this cache's KeyBuilders; never leaves it

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

// NewCache returns an empty cache; zero settings take the defaults.
func NewCache(s CacheSettings) *Cache {
	s = s.withDefaults()
	c := &Cache{
		ttl:        s.TTL,
		maxEntries: s.MaxEntries,
		maxBytes:   s.MaxBytes,
		items:      make(map[Key]*list.Element),
	}
	rand.Read(c.secret[:]) // crypto/rand: never fails on supported platforms (Go 1.24+)
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
