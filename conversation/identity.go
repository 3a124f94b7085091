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

// identifier reads session ids from request headers and bodies, hashes
// them when configured, and reads the message text from bodies.
type identifier struct {
	sources []source
	// paths are the JSON paths looked for in a body: the json: sources in
	// order, then text_from's if set (hasText).
	paths   []jsonPath
	hasText bool
	// fields are the protobuf field numbers looked for in a gRPC request
	// message: the proto: sources in order, then text_from's if set
	// (hasProtoText).
	fields       []int
	hasProtoText bool
	keys         []string // headers read: header: sources and baggage
	key          []byte
	pool         sync.Pool // of hash.Hash (HMAC-SHA256 keyed with key)
}

func newIdentifier(sources []source, text jsonPath, textField int, key []byte) *identifier {
	id := &identifier{sources: sources, key: key}
	bag := false
	for _, s := range sources {
		switch {
		case s.kind == SourceJSON:
			id.paths = append(id.paths, s.path)
		case s.kind == SourceProto:
			id.fields = append(id.fields, s.field)
		case s.kind == SourceHeader:
			id.keys = append(id.keys, s.key)
		case s.kind == SourceBaggage && !bag:
			id.keys, bag = append(id.keys, "baggage"), true
		}
	}
	if text != nil {
		id.paths = append(id.paths, text)
		id.hasText = true
	}
	if textField > 0 {
		id.fields = append(id.fields, textField)
		id.hasProtoText = true
	}
	if key != nil {
		id.pool.New = func() any { return hmac.New(sha256.New, key) }
	}
	return id
}

// headerKeys lists the headers the sources read, lowercase. Callers must
// not change the slice.
func (d *identifier) headerKeys() []string { return d.keys }

// readsBody reports whether anything is read from request bodies.
func (d *identifier) readsBody() bool { return len(d.paths) > 0 || len(d.fields) > 0 }

// Identify returns the session id of a turn and where it was found
// (SourceNone and "" when nowhere). get reads a request header or gRPC
// metadata key, lowercase names. The id is hashed when hash_ids is on.
func (t *Tracker) Identify(get func(key string) string) (id, source string) {
	if t == nil {
		return "", SourceNone
	}
	id, src, _ := t.ids.read(get, nil, false)
	return id, src
}

// read returns the session id of a request (hashed if configured) and
// where it was found, and its message text. get (may be nil) reads
// headers; body (may be nil) is the start of a JSON body, or with proto
// of a gRPC call's first request message.
func (d *identifier) read(get func(key string) string, body []byte, proto bool) (id, src, text string) {
	var vals, pvals []string
	switch {
	case len(body) == 0:
	case proto && len(d.fields) > 0:
		pvals = extractProto(body, d.fields)
		if d.hasProtoText {
			text = pvals[len(pvals)-1]
		}
	case !proto && len(d.paths) > 0:
		vals = extractJSON(body, d.paths)
		if d.hasText {
			text = vals[len(vals)-1]
		}
	}
	var bag string
	bagRead := false
	jsonAt, protoAt := 0, 0
	for _, s := range d.sources {
		var v string
		switch s.kind {
		case SourceHeader:
			if get != nil {
				v = strings.TrimSpace(get(s.key))
			}
		case SourceBaggage:
			if !bagRead && get != nil {
				bag, bagRead = get("baggage"), true
			}
			v = baggageValue(bag, s.key)
		case SourceJSON:
			if vals != nil {
				v = vals[jsonAt]
			}
			jsonAt++
		case SourceProto:
			if pvals != nil {
				v = pvals[protoAt]
			}
			protoAt++
		}
		if validID(v) {
			return d.hash(v), s.kind, text
		}
	}
	return "", SourceNone, text
}

// hash is the id as kept: itself, or with hash_ids the first 128 bits of
// HMAC-SHA256(key, id) in hex. Keyed, because hashing alone can be
// reversed when ids come from a small space (OpenTelemetry, "Handling
// sensitive data").
func (d *identifier) hash(id string) string {
	if d.key == nil {
		// A copy: id is a piece of a request header or body, and a session
		// keeps it for its whole life; the piece would keep all of it.
		return strings.Clone(id)
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
