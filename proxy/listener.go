package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"time"

	"google.golang.org/grpc"

	"github.com/hopwatch/hopwatch/routes"
)

// listener is one bound address with its server.
type listener struct {
	spec routes.Listener
	ln   net.Listener
	grpc *grpc.Server
	http *http.Server
}

func (p *Proxy) newListener(spec routes.Listener) *listener {
	l := &listener{spec: spec}
	switch spec.Protocol {
	case routes.ListenerGRPC:
		maxMsg := spec.MaxMessageBytes
		if maxMsg <= 0 {
			maxMsg = routes.DefaultMaxMessageBytes
		}
		l.grpc = p.newGRPCServer(spec.Name, maxMsg)
	default:
		protocols := new(http.Protocols)
		protocols.SetHTTP1(true)
		protocols.SetUnencryptedHTTP2(true) // h2c with prior knowledge, which gRPC clients use
		l.http = &http.Server{
			Handler:   httpHandler{p: p, listener: spec.Name},
			Protocols: protocols,
			// Bound the time a client may take to send headers (slowloris);
			// bodies and streams are unbounded by design (uploads, SSE).
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			BaseContext:       func(net.Listener) context.Context { return p.ctx },
			ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		}
	}
	return l
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
	l.ln = ln
	return nil
}

func (p *Proxy) serve(l *listener) {
	p.serving.Add(1)
	go func() {
		defer p.serving.Done()
		var err error
		if l.grpc != nil {
			err = l.grpc.Serve(l.ln)
		} else {
			err = l.http.Serve(l.ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
			p.log.Error("listener stopped", "listener", l.spec.Name, "err", err)
		}
	}()
}

// drain stops accepting at once and lets calls in flight finish until ctx is
// done, then closes what remains.
func (l *listener) drain(ctx context.Context) {
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
