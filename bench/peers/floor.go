package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
)

// The go-floor target is the least a Go proxy built on the standard stacks
// can cost: net/http's httputil.ReverseProxy for HTTP/1.1 and h2c, and a
// bare grpc-go pass-through (an UnknownServiceHandler relaying raw
// messages, metadata and trailers) for gRPC, with no routing, no limits and
// no telemetry. It is this harness binary re-executed (floorEnv), so it
// needs nothing built. Its row says how much of hopwatch's cost on a
// workload is the stack it stands on rather than hopwatch's own work: a goal
// that go-floor misses cannot be met by cutting hopwatch's code alone.

// floorEnv, when set in the environment, makes this binary the go-floor
// proxy instead of the harness; its value is the addresses, as
// "grpc,http,h2c,backendGRPC,backendHTTP".
const floorEnv = "HOPWATCH_BENCH_FLOOR"

func floorTarget() target {
	return target{Name: "go-floor", start: func(ctx context.Context, e *runEnv) (*proc, addrs, error) {
		self, err := os.Executable()
		if err != nil {
			return nil, addrs{}, err
		}
		spec := strings.Join([]string{e.GRPC, e.HTTP, e.H2C, e.BackendGRPC, e.BackendHTTP}, ",")
		return startProcEnv(ctx, e, "go-floor", []string{floorEnv + "=" + spec}, self)
	}}
}

// runFloor is the go-floor proxy's main: it serves until SIGTERM.
func runFloor(spec string) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	return serveFloor(ctx, spec, nil)
}

// serveFloor serves the go-floor proxy until ctx ends; ready, if not nil, is
// closed once all three listeners accept connections.
func serveFloor(ctx context.Context, spec string, ready chan<- struct{}) error {
	a := strings.Split(spec, ",")
	if len(a) != 5 {
		return fmt.Errorf("%s=%q: want grpc,http,h2c,backendGRPC,backendHTTP", floorEnv, spec)
	}
	grpcAddr, httpAddr, h2cAddr, backendGRPC, backendHTTP := a[0], a[1], a[2], a[3], a[4]

	target := &url.URL{Scheme: "http", Host: backendHTTP}
	// The settings any tuned Go reverse proxy uses: a connection pool as
	// deep as hopwatch's and pooled copy buffers (without them every
	// request allocates 32 KiB, and the floor would be the garbage
	// collector's).
	rp := &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport:  &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: 90 * time.Second},
		BufferPool: &floorBuffers{},
	}
	var servers []*http.Server
	for _, addr := range []string{httpAddr, h2cAddr} {
		protocols := new(http.Protocols)
		protocols.SetHTTP1(true)
		protocols.SetUnencryptedHTTP2(true)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeAll(servers)
			return err
		}
		s := &http.Server{Handler: rp, Protocols: protocols}
		servers = append(servers, s)
		go s.Serve(ln)
	}

	cc, err := grpc.NewClient(backendGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(floorCodec{})))
	if err != nil {
		closeAll(servers)
		return err
	}
	defer cc.Close()
	gs := grpc.NewServer(grpc.ForceServerCodecV2(floorCodec{}), grpc.UnknownServiceHandler(func(_ any, in grpc.ServerStream) error {
		return floorRelay(cc, in)
	}))
	ln, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		closeAll(servers)
		return err
	}
	go gs.Serve(ln)
	if ready != nil {
		close(ready)
	}

	<-ctx.Done()
	gs.Stop()
	closeAll(servers)
	return nil
}

func closeAll(servers []*http.Server) {
	for _, s := range servers {
		s.Close()
	}
}

// floorRelay forwards one call of any kind: metadata, every message both
// ways, then the upstream's headers, trailers and status.
func floorRelay(cc *grpc.ClientConn, in grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(in)
	md, _ := metadata.FromIncomingContext(in.Context())
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(in.Context(), md.Copy()))
	defer cancel()
	out, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, method)
	if err != nil {
		return err
	}
	go func() {
		for {
			var f floorFrame
			if err := in.RecvMsg(&f); err != nil {
				if errors.Is(err, io.EOF) {
					out.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := out.SendMsg(&f); err != nil {
				return
			}
		}
	}()
	first := true
	for {
		var f floorFrame
		err := out.RecvMsg(&f)
		if first {
			first = false
			if h, herr := out.Header(); herr == nil {
				in.SetHeader(h)
			}
		}
		if err != nil {
			in.SetTrailer(out.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := in.SendMsg(&f); err != nil {
			return err
		}
	}
}

// floorBuffers is httputil.BufferPool on a sync.Pool of 32 KiB buffers.
type floorBuffers struct{ p sync.Pool }

func (b *floorBuffers) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *floorBuffers) Put(buf []byte) { b.p.Put(&buf) }

// floorFrame and floorCodec pass messages through undecoded, as
// hopwatch's own raw codec does.
type floorFrame struct{ data mem.BufferSlice }

type floorCodec struct{}

var _ encoding.CodecV2 = floorCodec{}

func (floorCodec) Name() string { return "" }

func (floorCodec) Marshal(v any) (mem.BufferSlice, error) {
	f := v.(*floorFrame)
	out := f.data
	f.data = nil
	return out, nil
}

func (floorCodec) Unmarshal(data mem.BufferSlice, v any) error {
	data.Ref()
	v.(*floorFrame).data = data
	return nil
}
