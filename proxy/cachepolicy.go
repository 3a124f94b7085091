package proxy

import (
	"net/http"
	"slices"
	"strings"

	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/fallback"
)

// The fallback cache answers one caller with what the upstream told
// another, so what may be stored is decided here, in one place, for both
// protocols. The rules (README "Fallback cache: what is stored"):
//
//   - A request that carries a credential (credentialHeaders) is neither
//     answered from the cache nor stored in it, unless the route names that
//     header in fallback.cache.headers; its value then joins the key, which
//     is a keyed hash (fallback.KeyBuilder), never the raw secret.
//   - HTTP (RFC 9111): only complete 200 and 203 responses are stored
//     (never 206, never a body cut short); not with Set-Cookie; not when any
//     Cache-Control line of the response says no-store, no-cache or private,
//     nor when the request says no-store; Vary is honoured (each variant
//     keyed on the named request headers), and Vary: * is not stored.
//   - gRPC: only an OK unary answer (one message); not when the response
//     metadata carries set-cookie or a cache-control that forbids storing;
//     each request message is length-prefixed in the key; response headers
//     and trailers are kept with the message.
//   - A reload that changes a route's listener, match or upstream starts a
//     fresh cache (resilience.same).

// credentialHeaders identify the caller. A response to a request carrying
// one may be personal: RFC 9111 §3.5 forbids a shared cache to store it
// without an explicit opt-in, which here is naming the header in the key.
// API keys are credentials too, whatever header carries them.
var credentialHeaders = []string{"Authorization", "Proxy-Authorization", "Cookie", "X-Api-Key", "Api-Key"}

// grpcCredentialKeys are credentialHeaders as gRPC metadata keys.
var grpcCredentialKeys = func() []string {
	out := make([]string, len(credentialHeaders))
	for i, h := range credentialHeaders {
		out[i] = strings.ToLower(h)
	}
	return out
}()

// cacheReq is what the cache needs of one request: its key, whether it
// may be answered from the cache and whether its answer may be stored.
type cacheReq struct {
	key    fallback.Key
	read   bool        // may be answered from the cache
	store  bool        // its response may be stored
	header http.Header // request headers, for Vary (HTTP only)
}

// named reports whether the route put header h (canonical) in its key.
func (res *resilience) named(h string) bool { return slices.Contains(res.keyNames, h) }

// httpCacheReq derives the cache request of an HTTP request whose body is
// body (already buffered).
func (res *resilience) httpCacheReq(req *http.Request, body []byte) cacheReq {
	if res.cache == nil {
		return cacheReq{}
	}
	// The client's own headers: hop-by-hop credentials (Proxy-
	// Authorization) are no longer in req, but were sent.
	sent := req.Header
	if in := inboundOf(req.Context()).header; in != nil {
		sent = in
	}
	for _, h := range credentialHeaders {
		if (len(sent.Values(h)) > 0 || len(req.Header.Values(h)) > 0) && !res.named(h) {
			return cacheReq{}
		}
	}
	names := res.keyNames
	b := res.cache.NewKey().String(res.name).String(req.Method).String(req.URL.RequestURI()).Int(len(names))
	for _, h := range names {
		b.String(h).String(strings.Join(req.Header.Values(h), ","))
	}
	return cacheReq{
		key:    b.Bytes(body).Sum(),
		read:   true,
		store:  !hasDirective(req.Header.Values("Cache-Control"), "no-store"),
		header: req.Header,
	}
}

// grpcCacheReq derives the cache request of a complete gRPC request.
func (res *resilience) grpcCacheReq(method string, md metadata.MD, msgs [][]byte) cacheReq {
	if res.cache == nil {
		return cacheReq{}
	}
	for i, k := range grpcCredentialKeys {
		if len(md.Get(k)) > 0 && !res.named(credentialHeaders[i]) {
			return cacheReq{}
		}
	}
	names := res.keyNames
	b := res.cache.NewKey().String(res.name).String("grpc").String(method).Int(len(names))
	for _, h := range names {
		b.String(h).String(strings.Join(md.Get(h), ","))
	}
	b.Int(len(msgs))
	for _, m := range msgs {
		b.Bytes(m)
	}
	return cacheReq{key: b.Sum(), read: true, store: true}
}

// lookup returns the stored answer for cr, following a Vary marker to the
// variant of this request.
func (res *resilience) lookup(cr cacheReq) (*fallback.Entry, bool) {
	if !cr.read {
		return nil, false
	}
	now := res.now()
	e, ok := res.cache.Get(cr.key, now)
	if ok && e.Vary != nil {
		e, ok = res.cache.Get(res.varyKey(cr, e.Vary), now)
	}
	if !ok || e.Vary != nil {
		return nil, false
	}
	return e, true
}

// varyKey is the key of the variant of cr's request for the Vary names.
func (res *resilience) varyKey(cr cacheReq, names []string) fallback.Key {
	b := res.cache.NewKey().Bytes(cr.key[:]).Int(len(names))
	for _, h := range names {
		b.String(h).String(strings.Join(cr.header.Values(h), ","))
	}
	return b.Sum()
}

// storeHTTP keeps a finished HTTP response, if the rules allow.
func (res *resilience) storeHTTP(cr cacheReq, resp *http.Response, body []byte) bool {
	if !cr.store || !storableHTTP(resp, body) {
		return false
	}
	vary, ok := varyNames(resp.Header)
	if !ok {
		return false
	}
	e := entryOf(resp, body)
	now := res.now()
	if len(vary) == 0 {
		return res.cache.Put(cr.key, e, now)
	}
	// A Vary on a credential the route did not name keys the variant on
	// its absence only (requests carrying it were not cached), which is
	// safe; naming it puts its keyed hash in the key.
	if !res.cache.Put(res.varyKey(cr, vary), e, now) {
		return false
	}
	return res.cache.Put(cr.key, &fallback.Entry{Vary: vary}, now)
}

// storeGRPC keeps a unary gRPC success, if the rules allow.
func (res *resilience) storeGRPC(cr cacheReq, header metadata.MD, body []byte, trailer metadata.MD) bool {
	if !cr.store || !storableGRPC(header) {
		return false
	}
	return res.cache.Put(cr.key, &fallback.Entry{Header: header, Body: body, Trailer: trailer}, res.now())
}

// storableHTTP applies the response rules of RFC 9111 §3 that matter to a
// fallback cache. body is what the client got; a response whose declared
// length it does not match was cut short.
func storableHTTP(resp *http.Response, body []byte) bool {
	if resp.ContentLength >= 0 && int64(len(body)) != resp.ContentLength {
		return false
	}
	return storableResponse(resp)
}

// storableResponse checks what the response head alone decides, so that a
// body is only copied aside when it may be kept.
func storableResponse(resp *http.Response) bool {
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNonAuthoritativeInfo:
	default:
		return false // 206 and every other status: partial, or not an answer
	}
	if len(resp.Header.Values("Set-Cookie")) > 0 {
		return false
	}
	if _, ok := varyNames(resp.Header); !ok {
		return false
	}
	return !hasDirective(resp.Header.Values("Cache-Control"), "no-store", "no-cache", "private")
}

// storableGRPC applies the same response rules to gRPC response metadata:
// a service that says its answer is personal or not to be kept is obeyed
// on every protocol.
func storableGRPC(header metadata.MD) bool {
	if len(header.Get("set-cookie")) > 0 {
		return false
	}
	return !hasDirective(header.Get("cache-control"), "no-store", "no-cache", "private")
}

// hasDirective reports whether any Cache-Control line holds one of the
// directives (case-insensitive, with or without an argument:
// private="Set-Cookie" is private). RFC 9111 §5.2: a field may be sent as
// several lines, each a comma-separated list.
func hasDirective(lines []string, directives ...string) bool {
	for _, line := range lines {
		for part := range strings.SplitSeq(line, ",") {
			name, _, _ := strings.Cut(part, "=")
			name = strings.TrimSpace(name)
			for _, d := range directives {
				if strings.EqualFold(name, d) {
					return true
				}
			}
		}
	}
	return false
}

// varyNames reads every Vary line as sorted canonical header names; ok is
// false for Vary: *, which no stored response can satisfy (RFC 9111 §4.1).
func varyNames(h http.Header) (names []string, ok bool) {
	for _, line := range h.Values("Vary") {
		for part := range strings.SplitSeq(line, ",") {
			n := strings.TrimSpace(part)
			switch n {
			case "":
				continue
			case "*":
				return nil, false
			}
			names = append(names, http.CanonicalHeaderKey(n))
		}
	}
	slices.Sort(names)
	return slices.Compact(names), true
}
