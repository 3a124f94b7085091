package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/hopwatch/hopwatch/internal/tlsfile"
	"github.com/hopwatch/hopwatch/routes"
)

// defaultCertRecheck is how often, at most, a handshake looks at whether
// the certificate files changed (Options.CertRecheck).
//
// Why re-stat on handshake rather than watch the files: the check runs
// only when a connection is made and costs two or three stat calls once a
// second at most, needs no goroutine to own and stop, and sees every way a
// file can change (in-place writes, renames over it, Kubernetes' symlink
// swap of a secret volume's ..data directory), which a directory watch has
// to be taught one by one. A renewed certificate is served from the first
// handshake after it lands, at most this much later; connections already
// open keep the certificate they negotiated with, as TLS has it.
const defaultCertRecheck = time.Second

// certFiles are the files of one certificate source, and what they last
// held.
type certFiles struct {
	cert, key, ca string // ca may be empty
}

// certState is one successfully loaded set of files.
type certState struct {
	cert  *tls.Certificate
	pool  *x509.CertPool // client CAs; nil without ca
	stats [3]os.FileInfo // of cert, key, ca when they were read
	conf  *tls.Config    // the listener's handshake config; nil for upstreams
}

// certSource serves a key pair loaded from files and reloads it when the
// files change, without blocking handshakes on the reload of another. A
// reload that fails keeps the previous state in service; it is logged and
// counted once per change of the files, not at every handshake.
type certSource struct {
	files   certFiles
	recheck time.Duration
	what    string // for logs: `listener "x"`, `upstream "y"`
	log     *slog.Logger
	now     func() time.Time
	// build makes the handshake config of a new state (listeners); nil
	// for upstream client certificates.
	build func(*certState) *tls.Config
	// reloaded counts reloads by result (nil: not counted).
	reloaded func(ok bool)

	cur  atomic.Pointer[certState]
	next atomic.Int64 // unix nanoseconds before which no stat is made

	mu     sync.Mutex     // one reload at a time; guards failed
	failed [3]os.FileInfo // files whose load failed: not retried until they change
}

func newCertSource(files certFiles, recheck time.Duration, what string, log *slog.Logger, now func() time.Time, build func(*certState) *tls.Config, reloaded func(bool)) (*certSource, error) {
	s := &certSource{files: files, recheck: recheck, what: what, log: log, now: now, build: build, reloaded: reloaded}
	st, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur.Store(st)
	s.next.Store(now().Add(recheck).UnixNano())
	return s, nil
}

// load reads the files. The stats are taken before the reads, so a file
// written between the two is read again at the next check.
func (s *certSource) load() (*certState, error) {
	st := &certState{stats: s.stat()}
	cert, err := tlsfile.KeyPair(s.files.cert, s.files.key)
	if err != nil {
		return nil, err
	}
	st.cert = cert
	if s.files.ca != "" {
		if st.pool, err = tlsfile.CertPool("client_ca_file", s.files.ca); err != nil {
			return nil, err
		}
	}
	if s.build != nil {
		st.conf = s.build(st)
	}
	return st, nil
}

func (s *certSource) stat() [3]os.FileInfo {
	var out [3]os.FileInfo
	for i, f := range [3]string{s.files.cert, s.files.key, s.files.ca} {
		if f != "" {
			out[i], _ = os.Stat(f) // nil when missing: differs from any file
		}
	}
	return out
}

// sameFiles reports whether a and b describe the same file contents as far
// as stat can tell: same inode, size and modification time.
func sameFiles(a, b [3]os.FileInfo) bool {
	for i := range a {
		switch {
		case a[i] == nil && b[i] == nil:
		case a[i] == nil || b[i] == nil:
			return false
		case !os.SameFile(a[i], b[i]) || a[i].Size() != b[i].Size() || !a[i].ModTime().Equal(b[i].ModTime()):
			return false
		}
	}
	return true
}

// current returns the state to use for a new handshake, reloading the
// files first when they changed. Only the handshake that wins the
// once-a-second check stats them; the others use the current state.
func (s *certSource) current() *certState {
	now := s.now().UnixNano()
	next := s.next.Load()
	if now < next || !s.next.CompareAndSwap(next, now+int64(s.recheck)) {
		return s.cur.Load()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.cur.Load()
	stats := s.stat()
	if sameFiles(stats, cur.stats) || sameFiles(stats, s.failed) {
		return cur
	}
	st, err := s.load()
	if err != nil {
		s.failed = stats
		s.log.Error("TLS certificate reload failed; the previous certificate stays in service", "of", s.what, "err", err)
		if s.reloaded != nil {
			s.reloaded(false)
		}
		return cur
	}
	s.failed = [3]os.FileInfo{}
	s.cur.Store(st)
	s.log.Info("TLS certificate reloaded", "of", s.what, "serial", st.cert.Leaf.SerialNumber.String(), "not_after", st.cert.Leaf.NotAfter)
	if s.reloaded != nil {
		s.reloaded(true)
	}
	return st
}

// tlsVersion maps a written min_version to its constant.
func tlsVersion(v string) uint16 {
	if v == routes.TLSVersion13 {
		return tls.VersionTLS13
	}
	return tls.VersionTLS12
}

// listenerTLSConfig is the server TLS configuration of a listener: each
// handshake gets the config of the current certificate state, so a
// reloaded certificate or client CA bundle applies from the next
// connection on. nextProtos are the ALPN protocols offered (RFC 7301).
func (p *Proxy) listenerTLSConfig(spec routes.Listener, nextProtos []string, counters *connCounters) (*tls.Config, error) {
	t := spec.TLS
	minVersion := tlsVersion(t.MinVersion)
	build := func(st *certState) *tls.Config {
		c := &tls.Config{
			MinVersion:   minVersion,
			NextProtos:   nextProtos,
			Certificates: []tls.Certificate{*st.cert},
		}
		if st.pool != nil {
			c.ClientCAs = st.pool
			c.ClientAuth = tls.RequireAndVerifyClientCert
		}
		return c
	}
	src, err := newCertSource(certFiles{cert: t.CertFile, key: t.KeyFile, ca: t.ClientCAFile}, p.certRecheck,
		`listener "`+spec.Name+`"`, p.log, p.now, build, counters.certReloaded)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: minVersion,
		NextProtos: nextProtos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return src.current().conf, nil
		},
	}, nil
}

// upstreamTLSConfig is the client TLS configuration of an upstream, or nil
// for a cleartext one. Without ca_file the system roots verify the
// upstream; the client certificate, if any, is reloaded like a listener's.
func upstreamTLSConfig(spec routes.Upstream, log *slog.Logger, now func() time.Time, recheck time.Duration) (*tls.Config, error) {
	if !spec.UsesTLS() {
		return nil, nil
	}
	t := spec.TLS
	if t == nil {
		t = &routes.UpstreamTLS{}
	}
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, // validation: only without ca_file and server_name
	}
	if t.CAFile != "" {
		pool, err := tlsfile.CertPool("ca_file", t.CAFile)
		if err != nil {
			return nil, err
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" {
		src, err := newCertSource(certFiles{cert: t.CertFile, key: t.KeyFile}, recheck, `upstream "`+spec.Name+`"`, log, now, nil, nil)
		if err != nil {
			return nil, err
		}
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.current().cert, nil
		}
	}
	return c, nil
}

// errUpstreamTLS: the TLS handshake with the upstream failed (its
// certificate did not verify, or it does not speak TLS): a configuration
// problem on one side or the other, never the client's.
var errUpstreamTLS = errors.New("upstream TLS handshake failed")

// isTLSError reports a failed TLS handshake with an upstream, as
// net/http's transport returns it, or as grpc-go words it in the
// UNAVAILABLE status of a stream that could not be opened: its transport
// prefixes our side's handshake errors with "authentication handshake
// failed", and passes the upstream's alerts (RFC 8446 §6.2: a refused
// client certificate, no common ALPN protocol), which crypto/tls words
// "remote error: tls: ...", as they are.
func isTLSError(err error) bool {
	var verr *tls.CertificateVerificationError
	var rerr tls.RecordHeaderError
	if errors.As(err, &verr) || errors.As(err, &rerr) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "authentication handshake failed") ||
		strings.Contains(msg, "tls: failed to verify certificate") ||
		strings.Contains(msg, "remote error: tls: ")
}

// certCaller is the caller a verified client certificate names: the last
// path segment of its SPIFFE ID (spiffe://td/ns/bot/sa/nlu → nlu), else its
// subject common name; "" without a verified certificate. Telemetry then
// bounds it by the callers list, like every caller value.
func certCaller(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	leaf := cs.VerifiedChains[0][0]
	for _, u := range leaf.URIs {
		if !strings.EqualFold(u.Scheme, "spiffe") {
			continue
		}
		path := strings.TrimRight(u.Path, "/")
		if i := strings.LastIndexByte(path, '/'); i >= 0 && i+1 < len(path) {
			return path[i+1:]
		}
		break // a trust domain alone names no workload: the CN may
	}
	return leaf.Subject.CommonName
}

// grpcCallerOf is callerOf for a call on a gRPC listener, whose TLS state
// is in the peer of its context. The state is only looked at when the
// caller comes from it, and stays on the stack.
func (l listenerConf) grpcCallerOf(ctx context.Context, h routes.Header) string {
	if !l.fromCert {
		return l.callerOf(h, nil)
	}
	if pr, ok := peer.FromContext(ctx); ok {
		if info, ok := pr.AuthInfo.(credentials.TLSInfo); ok {
			return certCaller(&info.State)
		}
	}
	return ""
}
