package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/routes"
)

// TLSTransportSocket is the name of Envoy's TLS transport socket, the only
// one hopwatch maps (to a listener's or an upstream's tls).
const TLSTransportSocket = "envoy.transport_sockets.tls"

// outOfScope is appended to the messages about TLS settings hopwatch does
// not map: certificates come as files or inline, never by SDS or a
// certificate provider, and nothing that weakens verification is taken.
const outOfScope = "hopwatch takes certificates as files or inline PEM (no SDS, certificate providers or verification overrides)"

// inlineFiles writes the inline PEM of TLS contexts (trusted_ca,
// certificate_chain, private_key as inline_bytes or inline_string) to
// files, because hopwatch's tls settings name files (and reload them when
// they change). Files are named by their content's hash, so an unchanged
// certificate keeps its path and the same configuration translates the
// same; they live in a private directory (0700, files 0600) made on first
// use and removed by Close.
type inlineFiles struct {
	mu  sync.Mutex
	dir string // "" until first use
	// base is where the directory is made (empty: os.TempDir()).
	base string
}

// path returns the file holding data, writing it first if needed.
func (f *inlineFiles) path(data []byte) (string, error) {
	if f == nil {
		return "", errors.New("inline certificates need a directory to be written to")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dir == "" {
		dir, err := os.MkdirTemp(f.base, "hopwatch-xds-tls-")
		if err != nil {
			return "", err
		}
		f.dir = dir
	}
	sum := sha256.Sum256(data)
	p := filepath.Join(f.dir, hex.EncodeToString(sum[:12])+".pem")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	tmp, err := os.CreateTemp(f.dir, ".tmp-*")
	if err != nil {
		return "", err
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	// A rename: a reader never sees half a file.
	if err := os.Rename(tmp.Name(), p); err != nil {
		os.Remove(tmp.Name())
		return "", err
	}
	return p, nil
}

// Close removes the directory and its files.
func (f *inlineFiles) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dir == "" {
		return nil
	}
	err := os.RemoveAll(f.dir)
	f.dir = ""
	return err
}

// setFields names the fields of m that are set, for "not supported".
func setFields(m proto.Message) []string {
	var names []string
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		names = append(names, string(fd.Name()))
		return true
	})
	return names
}

func unsupported(path string, m proto.Message, errs *fieldErrs) {
	if names := setFields(m); len(names) > 0 {
		errs.add(path, "%s not supported: %s", strings.Join(names, ", "), outOfScope)
	}
}

// dataSource is the file of a DataSource: its filename, or a file written
// with its inline bytes or string.
func dataSource(ds *corev3.DataSource, path string, files *inlineFiles, errs *fieldErrs) string {
	switch s := ds.GetSpecifier().(type) {
	case *corev3.DataSource_Filename:
		return s.Filename
	case *corev3.DataSource_InlineBytes:
		p, err := files.path(s.InlineBytes)
		if err != nil {
			errs.add(path, "%v", err)
		}
		return p
	case *corev3.DataSource_InlineString:
		p, err := files.path([]byte(s.InlineString))
		if err != nil {
			errs.add(path, "%v", err)
		}
		return p
	case nil:
		errs.add(path, "empty data source")
	default:
		errs.add(path, "%T is not supported (filename, inline_bytes, inline_string are)", s)
	}
	return ""
}

// commonTLS is what hopwatch takes from a CommonTlsContext.
type commonTLS struct {
	certFile, keyFile, caFile string
	minVersion                tlsv3.TlsParameters_TlsProtocol
}

func translateCommonTLS(c *tlsv3.CommonTlsContext, path string, files *inlineFiles, errs *fieldErrs) commonTLS {
	var out commonTLS
	if c == nil {
		return out // a context without common settings: the system roots
	}
	c = proto.Clone(c).(*tlsv3.CommonTlsContext)
	// ALPN: hopwatch offers what the listener's or upstream's protocol
	// speaks (h2, http/1.1).
	c.AlpnProtocols = nil
	if tp := c.GetTlsParams(); tp != nil {
		out.minVersion = tp.GetTlsMinimumProtocolVersion()
		switch out.minVersion {
		case tlsv3.TlsParameters_TLS_AUTO, tlsv3.TlsParameters_TLSv1_2, tlsv3.TlsParameters_TLSv1_3:
		default:
			errs.add(path+".tls_params.tls_minimum_protocol_version", "%s: hopwatch speaks TLS 1.2 and 1.3 only (RFC 8996)", out.minVersion)
		}
		if v := tp.GetTlsMaximumProtocolVersion(); v != tlsv3.TlsParameters_TLS_AUTO && v != tlsv3.TlsParameters_TLSv1_3 {
			errs.add(path+".tls_params.tls_maximum_protocol_version", "%s is not supported (TLS_AUTO, TLSv1_3)", v)
		}
		tp = proto.Clone(tp).(*tlsv3.TlsParameters)
		tp.TlsMinimumProtocolVersion, tp.TlsMaximumProtocolVersion = 0, 0
		unsupported(path+".tls_params", tp, errs)
		c.TlsParams = nil
	}
	switch certs := c.GetTlsCertificates(); len(certs) {
	case 0:
	case 1:
		cert := proto.Clone(certs[0]).(*tlsv3.TlsCertificate)
		cPath := path + ".tls_certificates[0]"
		if cert.GetCertificateChain() == nil || cert.GetPrivateKey() == nil {
			errs.add(cPath, "certificate_chain and private_key are required")
		} else {
			out.certFile = dataSource(cert.GetCertificateChain(), cPath+".certificate_chain", files, errs)
			out.keyFile = dataSource(cert.GetPrivateKey(), cPath+".private_key", files, errs)
		}
		cert.CertificateChain, cert.PrivateKey = nil, nil
		unsupported(cPath, cert, errs)
		c.TlsCertificates = nil
	default:
		errs.add(path+".tls_certificates", "%d certificates: hopwatch serves one", len(certs))
		c.TlsCertificates = nil
	}
	if vc := c.GetValidationContext(); vc != nil {
		vc = proto.Clone(vc).(*tlsv3.CertificateValidationContext)
		vPath := path + ".validation_context"
		if vc.GetTrustedCa() != nil {
			out.caFile = dataSource(vc.GetTrustedCa(), vPath+".trusted_ca", files, errs)
		}
		vc.TrustedCa = nil
		unsupported(vPath, vc, errs)
		c.ValidationContextType = nil
	}
	unsupported(path, c, errs)
	return out
}

// typedTLS unmarshals a TLS transport socket's context into m.
func typedTLS(ts *corev3.TransportSocket, path string, m proto.Message, errs *fieldErrs) bool {
	tc := ts.GetTypedConfig()
	if tc == nil || !tc.MessageIs(m) {
		errs.add(path, "transport socket %q: only %s with a %s is supported", ts.GetName(), TLSTransportSocket, m.ProtoReflect().Descriptor().Name())
		return false
	}
	if err := tc.UnmarshalTo(m); err != nil {
		errs.add(path, "%v", err)
		return false
	}
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			errs.add(path, "%v", err)
			return false
		}
	}
	return true
}

// translateUpstreamTLS maps a cluster's UpstreamTlsContext: sni is the
// name verified and sent, validation_context.trusted_ca the CAs (none: the
// system roots; never "no verification", which Envoy does without a
// validation context), tls_certificates[0] the client certificate.
func translateUpstreamTLS(ts *corev3.TransportSocket, path string, files *inlineFiles, errs *fieldErrs) *routes.UpstreamTLS {
	var ctx tlsv3.UpstreamTlsContext
	if !typedTLS(ts, path, &ctx, errs) {
		return nil
	}
	out := &routes.UpstreamTLS{ServerName: ctx.GetSni()}
	c := translateCommonTLS(ctx.GetCommonTlsContext(), path+".common_tls_context", files, errs)
	out.CAFile, out.CertFile, out.KeyFile = c.caFile, c.certFile, c.keyFile
	if c.minVersion == tlsv3.TlsParameters_TLSv1_3 {
		errs.add(path+".common_tls_context.tls_params.tls_minimum_protocol_version", "TLSv1_3 to upstreams is not supported: hopwatch offers TLS 1.2 and 1.3")
	}
	rest := proto.Clone(&ctx).(*tlsv3.UpstreamTlsContext)
	rest.Sni, rest.CommonTlsContext = "", nil
	// Renegotiation: hopwatch never renegotiates, whatever is allowed.
	rest.AllowRenegotiation = false
	unsupported(path, rest, errs)
	return out
}

// translateListenerTLS maps a filter chain's DownstreamTlsContext:
// tls_certificates[0] is the server certificate (required), and
// validation_context.trusted_ca with require_client_certificate the CAs
// of mutual TLS (hopwatch verifies client certificates only when it
// requires them).
func translateListenerTLS(ts *corev3.TransportSocket, path string, files *inlineFiles, errs *fieldErrs) *routes.ListenerTLS {
	var ctx tlsv3.DownstreamTlsContext
	if !typedTLS(ts, path, &ctx, errs) {
		return nil
	}
	c := translateCommonTLS(ctx.GetCommonTlsContext(), path+".common_tls_context", files, errs)
	out := &routes.ListenerTLS{CertFile: c.certFile, KeyFile: c.keyFile}
	if c.certFile == "" {
		errs.add(path+".common_tls_context.tls_certificates", "a TLS listener needs its certificate")
	}
	switch c.minVersion {
	case tlsv3.TlsParameters_TLSv1_2:
		out.MinVersion = routes.TLSVersion12
	case tlsv3.TlsParameters_TLSv1_3:
		out.MinVersion = routes.TLSVersion13
	}
	require := ctx.GetRequireClientCertificate().GetValue()
	switch {
	case require && c.caFile == "":
		errs.add(path+".require_client_certificate", "requiring client certificates needs validation_context.trusted_ca")
	case !require && c.caFile != "":
		errs.add(path+".common_tls_context.validation_context", "hopwatch verifies client certificates only when it requires them: set require_client_certificate")
	}
	out.ClientCAFile = c.caFile
	rest := proto.Clone(&ctx).(*tlsv3.DownstreamTlsContext)
	rest.CommonTlsContext, rest.RequireClientCertificate = nil, nil
	unsupported(path, rest, errs)
	return out
}

func fileSource(path string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path}}
}

func tlsSocket(m proto.Message) (*corev3.TransportSocket, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, err
	}
	return &corev3.TransportSocket{Name: TLSTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}, nil
}

// buildUpstreamTLS is the transport socket of a TLS upstream. Files are
// named by path, so they must exist at that path on every replica (a
// mounted secret); insecure_skip_verify is not sent, as it means "do not
// verify" and a replica would not know it was asked.
func buildUpstreamTLS(u routes.Upstream) (*corev3.TransportSocket, error) {
	t := u.TLS
	if t == nil {
		t = &routes.UpstreamTLS{}
	}
	if t.InsecureSkipVerify {
		return nil, errors.New("tls.insecure_skip_verify is not served over xDS: replicas always verify their upstreams")
	}
	common := &tlsv3.CommonTlsContext{}
	if t.CAFile != "" {
		common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: fileSource(t.CAFile)}}
	}
	if t.CertFile != "" {
		common.TlsCertificates = []*tlsv3.TlsCertificate{{CertificateChain: fileSource(t.CertFile), PrivateKey: fileSource(t.KeyFile)}}
	}
	return tlsSocket(&tlsv3.UpstreamTlsContext{Sni: t.ServerName, CommonTlsContext: common})
}

// buildListenerTLS is the transport socket of a TLS listener's filter
// chain.
func buildListenerTLS(t *routes.ListenerTLS) (*corev3.TransportSocket, error) {
	common := &tlsv3.CommonTlsContext{TlsCertificates: []*tlsv3.TlsCertificate{{
		CertificateChain: fileSource(t.CertFile), PrivateKey: fileSource(t.KeyFile)}}}
	switch t.MinVersion {
	case routes.TLSVersion12:
		common.TlsParams = &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2}
	case routes.TLSVersion13:
		common.TlsParams = &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3}
	}
	ctx := &tlsv3.DownstreamTlsContext{CommonTlsContext: common}
	if t.ClientCAFile != "" {
		common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: fileSource(t.ClientCAFile)}}
		ctx.RequireClientCertificate = wrapperspb.Bool(true)
	}
	return tlsSocket(ctx)
}
