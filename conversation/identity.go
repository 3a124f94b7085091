package conversation

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/url"
	"strings"
	"sync"
)

// MaxSessionIDBytes bounds an accepted session id. Longer values, or
// values with bytes outside visible US-ASCII, are ignored (the next source
// is tried): they are not ids any tool emits (Langfuse drops ids of 200
// characters or more), and a bound keeps a hostile client from making the
// tracker hold large keys.
const MaxSessionIDBytes = 200

// identifier reads session ids from request headers and hashes them when
// configured.
type identifier struct {
	sources []source
	key     []byte
	pool    sync.Pool // of hash.Hash (HMAC-SHA256 keyed with key)
}

func newIdentifier(sources []source, key []byte) *identifier {
	id := &identifier{sources: sources, key: key}
	if key != nil {
		id.pool.New = func() any { return hmac.New(sha256.New, key) }
	}
	return id
}

// Identify returns the session id of a turn and where it was found
// (SourceNone and "" when nowhere). get reads a request header or gRPC
// metadata key, lowercase names. The id is hashed when hash_ids is on.
func (t *Tracker) Identify(get func(key string) string) (id, source string) {
	if t == nil {
		return "", SourceNone
	}
	return t.ids.identify(get)
}

func (d *identifier) identify(get func(key string) string) (string, string) {
	var bag string
	bagRead := false
	for _, s := range d.sources {
		var v string
		switch s.kind {
		case SourceHeader:
			v = strings.TrimSpace(get(s.key))
		case SourceBaggage:
			if !bagRead {
				bag, bagRead = get("baggage"), true
			}
			v = baggageValue(bag, s.key)
		}
		if validID(v) {
			return d.hash(v), s.kind
		}
	}
	return "", SourceNone
}

// hash is the id as kept: itself, or with hash_ids the first 128 bits of
// HMAC-SHA256(key, id) in hex. Keyed, because hashing alone can be
// reversed when ids come from a small space (OpenTelemetry, "Handling
// sensitive data").
func (d *identifier) hash(id string) string {
	if d.key == nil {
		return id
	}
	h := d.pool.Get().(hash.Hash)
	h.Reset()
	h.Write([]byte(id))
	var sum [sha256.Size]byte
	out := hex.EncodeToString(h.Sum(sum[:0])[:16])
	d.pool.Put(h)
	return out
}

func validID(v string) bool {
	if v == "" || len(v) > MaxSessionIDBytes {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return false
		}
	}
	return true
}

// baggageValue finds key in a W3C baggage header (list-members separated
// by ',', each "key=value" with optional ";properties"; values are
// percent-encoded), W3C Baggage §3.3. get returns the first baggage header
// only. A malformed value yields "".
func baggageValue(header, key string) string {
	for header != "" {
		var member string
		member, header, _ = strings.Cut(header, ",")
		member, _, _ = strings.Cut(member, ";")
		k, v, ok := strings.Cut(member, "=")
		if !ok || strings.TrimSpace(k) != key {
			continue
		}
		v = strings.TrimSpace(v)
		if strings.IndexByte(v, '%') >= 0 {
			dec, err := url.PathUnescape(v)
			if err != nil {
				return ""
			}
			v = dec
		}
		return v
	}
	return ""
}
