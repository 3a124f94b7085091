package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hopwatch/hopwatch/routes"
)

// http2MaxFrameSize is the largest HTTP/2 frame an HTTP listener reads:
// SETTINGS_MAX_FRAME_SIZE's initial value (RFC 9113 §6.5.2).
const http2MaxFrameSize = 16 << 10

// listener is one bound address with its server.
type listener struct {
	spec  routes.Listener
	ln    net.Listener
	grpc  *grpc.Server // relay: messages
	relay *relayServer // a grpc listener's default (relay "" or frames)
	http  *http.Server
	guard *connGuard // connection cap and rapid-reset policy
	// tls is the HTTP or relay listener's server TLS config (nil:
	// cleartext); the grpc-go listener's is in its server's credentials.
	tls *tls.Config
	// closed is set when the socket was closed ahead of the drain, so that
	// its Serve loop ending is not reported as a failure.
	closed atomic.Bool
}

// newListener builds the server of spec; Apply calls it with p.mu held.
// It fails only when the listener's TLS files cannot be loaded.
func (p *Proxy) newListener(spec routes.Listener) (*listener, error) {
	l := &listener{spec: spec}
	lim := listenerLimits(spec.Limits)
	counters := new(connCounters)
	if old, ok := p.listeners[spec.Name]; ok {
		counters = old.guard.counters
	}
	l.guard = newConnGuard(spec.Name, lim.maxConnections, counters, p.log, p.now)
	maxMsg := spec.MaxMessageBytes
	if maxMsg <= 0 {
		maxMsg = routes.DefaultMaxMessageBytes
	}
	switch spec.Protocol {
	case routes.ListenerGRPC:
		if spec.Relay != routes.ListenerRelayMessages {
			// The frame relay, the default ("" or "frames").
			if spec.TLS != nil {
				// HTTP/2 by ALPN only (RFC 9113 §3.2), as grpc-go
				// requires; the relay refuses a connection that
				// negotiated anything else.
				conf, err := p.listenerTLSConfig(spec, []string{"h2"}, counters)
				if err != nil {
					return nil, fmt.Errorf("listener %q: %w", spec.Name, err)
				}
				l.tls = conf
			}
			l.relay = p.newRelayServer(spec.Name, maxMsg, lim)
			break
		}
		var opts []grpc.ServerOption
		if spec.TLS != nil {
			// grpc-go adds h2 to the offered protocols and refuses
			// clients that negotiate none (gRPC needs HTTP/2 over TLS
			// by ALPN); the handshake is bounded by ConnectionTimeout.
			conf, err := p.listenerTLSConfig(spec, nil, counters)
			if err != nil {
				return nil, fmt.Errorf("listener %q: %w", spec.Name, err)
			}
			opts = append(opts, grpc.Creds(credentials.NewTLS(conf)))
		}
		l.grpc = p.newGRPCServer(spec.Name, maxMsg, lim, l.guard, opts...)
	default:
		protocols := new(http.Protocols)
		protocols.SetHTTP1(true)
		if spec.TLS != nil {
			// HTTP/2 by ALPN only: cleartext HTTP/2 on a TLS listener
			// would be a way around it.
			conf, err := p.listenerTLSConfig(spec, []string{"h2", "http/1.1"}, counters)
			if err != nil {
				return nil, fmt.Errorf("listener %q: %w", spec.Name, err)
			}
			l.tls = conf
			protocols.SetHTTP2(true)
		} else {
			protocols.SetUnencryptedHTTP2(true) // h2c with prior knowledge, which gRPC clients use
		}
		// Outside in: the rapid-reset policy, the gRPC message limit,
		// then routing.
		var h http.Handler = httpHandler{p: p, listener: spec.Name}
		h = grpcLimitHandler{next: h, maxMsg: maxMsg}
		h = resetGuardHandler{next: h, guard: l.guard, now: p.now}
		l.http = &http.Server{
			Handler:   h,
			Protocols: protocols,
			// Bound the time a client may take to send headers (slowloris);
			// bodies and streams are unbounded by design (uploads, SSE).
			ReadHeaderTimeout: lim.readHeaderTimeout,
			// HTTP/1 keep-alive and HTTP/2 connections without streams.
			IdleTimeout: lim.idleTimeout,
			// HTTP/1 header bytes, and for HTTP/2 the advertised
			// SETTINGS_MAX_HEADER_LIST_SIZE, which net/http derives from
			// it (plus 32 bytes per field for ten fields) and enforces
			// while decoding, so HPACK references cannot expand beyond it;
			// a request over it gets 431.
			MaxHeaderBytes: lim.maxHeaderBytes,
			HTTP2: &http.HTTP2Config{
				// Streams beyond it are refused (RFC 9113 §5.1.2), and
				// net/http runs at most this many handlers per connection.
				MaxConcurrentStreams: lim.maxConcurrentStreams,
				// The protocol's initial frame size (RFC 9113 §4.2,
				// §6.5.2), not Go's 1 MiB: a client must split a
				// header block into CONTINUATION frames of at most this
				// much, and a larger frame is a FRAME_SIZE_ERROR. Clients
				// send DATA in 16 KiB frames anyway (grpc-go always, Go's
				// transport at the peer's setting), so nothing is lost.
				// (h2spec http2/4.2/3.)
				MaxReadFrameSize: http2MaxFrameSize,
				// Ping a silent connection, close it if the ping is not
				// answered: a vanished peer's streams end.
				SendPingTimeout: keepaliveTime,
				PingTimeout:     keepaliveTimeout,
			},
			BaseContext: func(net.Listener) context.Context { return p.ctx },
			ErrorLog:    slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		}
	}
	return l, nil
}

// sameSpec reports whether the running listener can serve spec as is. The
// handler reads routes from the generation, so only socket-level settings
// (and those fixed at server construction) matter here.
func (l *listener) sameSpec(spec routes.Listener) bool {
	return reflect.DeepEqual(l.spec, spec)
}

func (l *listener) bind() error {
	ln, err := net.Listen("tcp", l.spec.Address)
	if err != nil {
		return fmt.Errorf("listener %q: %w", l.spec.Name, err)
	}
	l.ln = l.guard.wrap(ln)
	if l.tls != nil {
		// Outside the guard, so that the guard counts and caps TCP
		// connections before any handshake work is done for them;
		// net/http performs the handshake in the connection's own
		// goroutine, bounded by ReadHeaderTimeout.
		l.ln = tls.NewListener(l.ln, l.tls)
	}
	return nil
}

func (p *Proxy) serve(l *listener) {
	p.serving.Add(1)
	go func() {
		defer p.serving.Done()
		var err error
		if l.relay != nil {
			err = l.relay.serve(l.ln)
		} else if l.grpc != nil {
			err = l.grpc.Serve(l.ln)
		} else {
			err = l.http.Serve(l.ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) && !l.closed.Load() {
			p.log.Error("listener stopped", "listener", l.spec.Name, "err", err)
		}
	}()
}

// stopAccepting closes the listening socket at once, before the drain that
// follows runs in the background: a reload that rebuilds a listener on the
// same address (new limits, say) binds it right after, and would otherwise
// race the drain for it ("address already in use"). Connections already
// accepted are untouched; the drain ends them.
// discard releases a listener that was built but will never serve: its
// socket if bound, and the gRPC server, whose stream workers
// (NumStreamWorkers) run from NewServer until Stop, so a dropped plan
// would otherwise leak them on every failed apply.
func (l *listener) discard() {
	if l.ln != nil {
		l.ln.Close()
	}
	if l.grpc != nil {
		l.grpc.Stop()
	}
}

func (l *listener) stopAccepting() {
	l.closed.Store(true)
	l.ln.Close()
}

// drain stops accepting at once and lets calls in flight finish until ctx is
// done, then closes what remains.
func (l *listener) drain(ctx context.Context) {
	if l.relay != nil {
		if l.ln != nil {
			l.ln.Close() // grpc.Server and http.Server close theirs too
		}
		l.relay.drain(ctx)
		return
	}
	if l.grpc != nil {
		done := make(chan struct{})
		go func() {
			l.grpc.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			l.grpc.Stop()
			<-done
		}
		return
	}
	if err := l.http.Shutdown(ctx); err != nil {
		l.http.Close()
	}
}
