package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/encoding/gzip" // accept gzip-compressed messages from clients, as upstreams would
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// bidi describes every proxied call: the proxy does not know, and need not
// know, which of the four kinds a method is; a full-duplex stream carries
// all of them.
var bidi = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// newGRPCServer builds the listener's server: no services are registered,
// every call reaches handle through grpc.UnknownServiceHandler and moves as
// raw frames. lim bounds what one client can hold; guard closes
// connections that flood resets.
func (p *Proxy) newGRPCServer(listener string, maxMsg int, lim limits, guard *connGuard, extra ...grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append([]grpc.ServerOption{
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			ctx := ss.Context()
			var c *guardedConn
			if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
				c = guard.conn(pr.Addr.String())
			}
			start := p.now()
			if err := ctx.Err(); err != nil {
				// Reset (or expired) before its handler ran: nothing to
				// forward.
				c.callEnded(errors.Is(err, context.Canceled))
				return status.FromContextError(err).Err()
			}
			err := p.handleGRPC(listener, ss)
			c.callEnded(isPremature(ctx, start, p.now()))
			return err
		}),
		grpc.ForceServerCodecV2(rawCodec{}),
		// Calls run on a pool of goroutines whose stacks have already
		// grown to what a proxied call needs, instead of a new goroutine
		// per call that grows its stack again (runtime.newstack and
		// copystack were ~6% of the proxy's CPU on unary calls, see
		// docs/benchmarks.md). When every worker is busy grpc-go starts a
		// goroutine as before, so this bounds nothing.
		grpc.NumStreamWorkers(streamWorkers()),
		grpc.MaxRecvMsgSize(maxMsg),
		grpc.MaxSendMsgSize(maxMsg),
		// Advertised as SETTINGS_MAX_HEADER_LIST_SIZE and enforced while
		// decoding: the HPACK decoder stops emitting fields beyond it, so
		// one-byte references to a large dynamic-table entry (RFC 7541
		// §7.3) cannot expand into megabytes of metadata; the stream is
		// reset. grpc-go's own default is 16 MiB per stream.
		grpc.MaxHeaderListSize(uint32(lim.maxHeaderBytes)),
		// Beyond it a new stream is refused (REFUSED_STREAM), and grpc-go
		// runs at most this many handlers per connection: it stops
		// reading the connection until one ends, which also bounds what a
		// rapid-reset flood dispatches at once (grpc-go 1.58.3 and later).
		grpc.MaxConcurrentStreams(uint32(lim.maxConcurrentStreams)),
		// The connection handshake (HTTP/2 preface and SETTINGS) must
		// complete within it (slowloris); grpc-go's default is 120s.
		grpc.ConnectionTimeout(lim.readHeaderTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: lim.idleTimeout, // GOAWAY, then close
			Time:              keepaliveTime,
			Timeout:           keepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             p.pingMinTime,
			PermitWithoutStream: keepalivePermitWithoutStream,
		}),
	}, extra...)...)
}

// streamWorkersPerCPU sizes the gRPC listener's worker pool: calls wait
// on their upstream most of their life, so many more workers than CPUs
// are busy at once; an idle worker costs one parked goroutine.
const streamWorkersPerCPU = 16

// streamWorkers follows GOMAXPROCS, which the Go runtime sets from the
// CPU quota of the container (cgroup) as well as the machine's CPUs.
func streamWorkers() uint32 {
	return uint32(streamWorkersPerCPU * runtime.GOMAXPROCS(0))
}

// mdHeader adapts gRPC metadata to routes.Header and to OpenTelemetry's
// TextMapCarrier (keys are lowercase in gRPC metadata, as propagators use).
type mdHeader metadata.MD

func (m mdHeader) Get(key string) string {
	if v := m[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (m mdHeader) Set(key, value string) { m[key] = []string{value} }

func (m mdHeader) Keys() []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

func (m mdHeader) del(key string) { delete(m, key) }

// handleGRPC serves one call of any kind on a gRPC listener.
func (p *Proxy) handleGRPC(listener string, ss grpc.ServerStream) error {
	gen := p.acquire()
	defer gen.release()

	ctx := ss.Context()
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "hopwatch: no method on server stream")
	}
	md, _ := metadata.FromIncomingContext(ctx)
	// grpc-go hands any path with a '/' to the unknown-service handler
	// ("/pkg.Svc/../x" included), and routes match by prefix: refuse what
	// is not a plain method name before matching.
	if err := routes.CheckGRPCMethod(method); err != nil {
		p.tel.Unrouted(listener)
		return grpcError(fmt.Errorf("%w: %w", errBadRequest, err), method)
	}
	req := routes.Request{Host: mdHeader(md).Get(":authority"), Path: method, Method: "POST", Header: mdHeader(md)}
	idx := gen.table.Match(listener, &req)
	if idx < 0 {
		p.tel.Unrouted(listener)
		return grpcError(errNoRoute, method)
	}
	rt := gen.routes[idx]
	return p.serveRoutedGRPC(ctx, ss, rt, md, method, gen.listeners[listener].grpcCallerOf(ctx, mdHeader(md)))
}

// serveRoutedGRPC serves a routed call whose messages come and go through
// ss: from grpc-go's server, or from a relay listener's client stream
// (relayMsgStream) for a route that needs whole messages.
func (p *Proxy) serveRoutedGRPC(ctx context.Context, ss grpc.ServerStream, rt *route, md metadata.MD, method, caller string) error {
	var fr *firstResponse
	if rt.spec.Timeout == 0 {
		// No written timeout: bound the wait for the first response
		// (headers, a message or the status), not a stream once begun.
		fr = newFirstResponse(ctx, p.firstResp)
		defer fr.release()
		ss = &firstResponseStream{ServerStream: ss, fr: fr}
		ctx = fr
	}
	clientCtx := ctx
	ctx, hop := rt.tel.Start(ctx, mdHeader(md), caller, method)
	ss = observeTurn(ss, hop)

	var err error
	if rt.res != nil {
		err = newGRPCCall(ss, rt, md, method).serve(clientCtx, ctx, hop)
	} else {
		err = p.callGRPC(ctx, ss, rt, hop, md, method)
	}
	if fr != nil && status.Code(err) == codes.DeadlineExceeded && errors.Is(fr.Err(), context.DeadlineExceeded) {
		// Nothing reached the client before the deadline (the first
		// response would have lifted it), so the status is still ours to
		// word, as on the HTTP listener, rather than grpc-go's "context
		// deadline exceeded".
		err = grpcError(errTimeout, method)
	}
	code := status.Code(err)
	hop.End(code.String(), telemetry.GRPCOutcome(code, errors.Is(clientCtx.Err(), context.Canceled)))
	return err
}

// turnStream lets the conversation signals see a gRPC call as the HTTP
// listener lets them see a request: the start of an entry call's first
// request message goes to the hop (proto: session and text sources), and
// a service's verdict in the response headers or trailers of any hop is
// recorded on the hop and removed before the client sees it. The proxy
// still knows nothing of conversations: telemetry says what it wants.
type turnStream struct {
	grpc.ServerStream
	hop     *telemetry.Hop
	capture io.Writer // the first message's start; nil once written or when not wanted
	verdict string    // metadata key, "" when none is read
}

// observeTurn wraps ss when the hop's observer wants anything of it.
func observeTurn(ss grpc.ServerStream, hop *telemetry.Hop) grpc.ServerStream {
	capture, verdict := hop.MessageCapture(), hop.VerdictKey()
	if capture == nil && verdict == "" {
		return ss
	}
	return &turnStream{ServerStream: ss, hop: hop, capture: capture, verdict: verdict}
}

// RecvMsg copies the start of the first message, as it passes.
func (s *turnStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && s.capture != nil {
		if f, ok := m.(*frame); ok {
			for _, b := range f.data {
				s.capture.Write(b.ReadOnlyData())
			}
		}
		s.capture = nil
	}
	return err
}

func (s *turnStream) SendHeader(md metadata.MD) error {
	return s.ServerStream.SendHeader(s.verdictOf(md))
}

func (s *turnStream) SetHeader(md metadata.MD) error {
	return s.ServerStream.SetHeader(s.verdictOf(md))
}

func (s *turnStream) SetTrailer(md metadata.MD) { s.ServerStream.SetTrailer(s.verdictOf(md)) }

// verdictOf records and removes the verdict in md. md may be shared (a
// cached answer's headers): it is copied before anything is removed.
func (s *turnStream) verdictOf(md metadata.MD) metadata.MD {
	if s.verdict == "" {
		return md
	}
	v := md.Get(s.verdict)
	if len(v) == 0 {
		return md
	}
	s.hop.Verdict(v[0])
	md = md.Copy()
	delete(md, s.verdict)
	return md
}

// upstreamContext derives the upstream call's context: the client's
// deadline travels as grpc-timeout and a route timeout can only shorten it.
// grpc-go drops reserved and pseudo headers (content-type, te, :authority,
// grpc-timeout, ...) from outgoing metadata itself, and sets its own;
// everything else, -bin keys included, passes as received. md is our own
// copy (FromIncomingContext copies), so each attempt may write its trace
// context into it.
func upstreamContext(ctx context.Context, rt *route, md metadata.MD) (context.Context, context.CancelFunc) {
	var cancel context.CancelFunc
	if rt.spec.Timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, rt.spec.Timeout)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	return metadata.NewOutgoingContext(ctx, md), cancel
}

// callGRPC forwards one call of any kind as a stream: the upstream call
// lives in a context derived from the client's, so the client's
// cancellation cancels it.
func (p *Proxy) callGRPC(ctx context.Context, ss grpc.ServerStream, rt *route, hop *telemetry.Hop, md metadata.MD, method string) error {
	ctx, cancel := upstreamContext(ctx, rt, md)
	defer cancel()
	gate, err := rt.up.admit()
	if err != nil {
		hop.Rejected(reasonOf(err))
		return grpcError(err, method)
	}
	defer gate.release()
	// end accounts one finished attempt with the breaker, outlier
	// detection and its span.
	end := func(ep *endpoint, att *telemetry.Attempt, err error) {
		code := status.Code(err)
		canceled := errors.Is(ss.Context().Err(), context.Canceled)
		c := classifyGRPC(code, canceled)
		rt.up.outcome(ep, c)
		gate.report(c)
		att.End(code.String(), telemetry.GRPCOutcome(code, canceled))
	}

	cs, ep, att, err := rt.up.openGRPC(ctx, hop, md, bidi, method, callOptions(md)...)
	if err != nil {
		err = grpcError(upstreamError(err), method)
		end(nil, att, err)
		return err
	}
	start := p.now()
	err = forwardGRPC(ss, cs, cancel, hop, gate)
	ep.inflight.Add(-1)
	if status.Code(err) != codes.Unavailable {
		ep.observe(p.now(), p.now().Sub(start))
	}
	end(ep, att, err)
	return err
}

// callOptions keeps the client's content-subtype (application/grpc+json
// stays +json) so that the upstream picks the same codec it would directly.
func callOptions(md metadata.MD) []grpc.CallOption {
	ct := mdHeader(md).Get("content-type")
	sub, ok := strings.CutPrefix(ct, "application/grpc")
	if !ok || len(sub) < 2 || (sub[0] != '+' && sub[0] != ';') {
		return nil
	}
	sub = sub[1:]
	if i := strings.IndexByte(sub, ';'); i >= 0 {
		sub = sub[:i]
	}
	return []grpc.CallOption{grpc.CallContentSubtype(sub)}
}

// forwardGRPC pumps frames both ways until the upstream ends the call, then
// hands its trailers and status to the client. cancel aborts the upstream
// call when the client side fails.
func forwardGRPC(ss grpc.ServerStream, cs grpc.ClientStream, cancel context.CancelFunc, hop *telemetry.Hop, gate *pass) error {
	// Client → upstream runs in its own goroutine; it ends when the client
	// half-closes (then CloseSend), when the upstream call ends (SendMsg
	// fails), or when the server stream is finished after this handler
	// returns (RecvMsg fails).
	go func() {
		var f frame
		for {
			if err := ss.RecvMsg(&f); err != nil {
				if errors.Is(err, io.EOF) {
					cs.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := cs.SendMsg(&f); err != nil {
				// io.EOF: the upstream ended the call; its status comes
				// from RecvMsg on the other side.
				f.release()
				return
			}
		}
	}()

	// Upstream → client, in the handler goroutine: headers as soon as the
	// upstream sends them (not with the first message), then messages, then
	// trailers. A trailers-only response (Header returns nil, nil) stays
	// trailers-only.
	md, err := cs.Header()
	hop.FirstByte()
	gate.firstResponse()
	if err == nil && md != nil {
		if err := ss.SendHeader(md); err != nil {
			cancel()
			return err
		}
	}
	var f frame
	for {
		err := cs.RecvMsg(&f)
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(&f); err != nil {
			f.release()
			cancel()
			return err
		}
	}
}
