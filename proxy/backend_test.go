package proxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// echoBackend is a real grpc-go server with a hand-written service
// descriptor (protobuf BytesValue messages, the standard codec), whose
// behaviour each call selects through request metadata:
//
//	x-*            echoed back as header "echo-x-*" (-bin keys too), except
//	               x-forwarded-*, which the HTTP listener adds by design
//	h-*  / t-*     sent back as header / trailer with the same key
//	x-status       end with this gRPC code; x-status-msg-bin is the message
//	               (raw bytes, so Unicode and whitespace survive), plus a detail
//	x-count/x-size server streaming: messages to send and their size
//	x-fail-after   bidi: fail after receiving this many messages
//	x-fail-first   the first call with this value fails UNAVAILABLE (no headers)
//	x-sleep-ms     answer after this long
//	x-block        block until the call's context ends, then report it
//	x-block-after-header  Bidi: send headers first, then as x-block
//	x-deadline     report the remaining deadline in header "deadline-ms"
//	x-traceparent-probe  report traceparent, tracestate and baggage as received
//	               in headers "echo-seen-*"
type echoBackend struct {
	addr     string
	srv      *grpc.Server
	canceled chan string  // method of each call whose context ended while blocked
	arrived  atomic.Int64 // calls that reached a handler's prelude

	mu       sync.Mutex // guards failedBy
	failedBy map[string]bool
}

const echoService = "test.v1.Echo"

func startEcho(t testing.TB) *echoBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &echoBackend{addr: ln.Addr().String(), canceled: make(chan string, 16)}
	b.srv = grpc.NewServer(grpc.MaxRecvMsgSize(16<<20), grpc.MaxSendMsgSize(16<<20))
	b.srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: echoService,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Unary",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.BytesValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				setH := func(md metadata.MD) error { return grpc.SetHeader(ctx, md) }
				setT := func(md metadata.MD) error { return grpc.SetTrailer(ctx, md) }
				if err := b.prelude(ctx, "Unary", setH, setT); err != nil {
					return nil, err
				}
				return in, nil
			},
		}},
		Streams: []grpc.StreamDesc{
			{StreamName: "ClientStream", ClientStreams: true, Handler: func(_ any, ss grpc.ServerStream) error {
				var all []byte
				n := 0
				for {
					in := new(wrapperspb.BytesValue)
					err := ss.RecvMsg(in)
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						return err
					}
					n++
					all = append(all, in.Value...)
				}
				if err := b.prelude(ss.Context(), "ClientStream", ss.SetHeader, setTrailer(ss)); err != nil {
					return err
				}
				ss.SetTrailer(metadata.Pairs("received", strconv.Itoa(n)))
				return ss.SendMsg(wrapperspb.Bytes(all))
			}},
			{StreamName: "ServerStream", ServerStreams: true, Handler: func(_ any, ss grpc.ServerStream) error {
				in := new(wrapperspb.BytesValue)
				if err := ss.RecvMsg(in); err != nil {
					return err
				}
				md, _ := metadata.FromIncomingContext(ss.Context())
				count, _ := strconv.Atoi(first(md, "x-count"))
				size, _ := strconv.Atoi(first(md, "x-size"))
				if err := ss.SendHeader(headerFor(md)); err != nil {
					return err
				}
				for i := range count {
					msg := make([]byte, size)
					for j := range msg {
						msg[j] = byte(i + j)
					}
					if err := ss.SendMsg(wrapperspb.Bytes(msg)); err != nil {
						return err
					}
				}
				return b.prelude(ss.Context(), "ServerStream", func(metadata.MD) error { return nil }, setTrailer(ss))
			}},
			{StreamName: "Bidi", ServerStreams: true, ClientStreams: true, Handler: func(_ any, ss grpc.ServerStream) error {
				md, _ := metadata.FromIncomingContext(ss.Context())
				if first(md, "x-block-after-header") != "" {
					// Let the client see that the call arrived, then hold it.
					if err := ss.SendHeader(metadata.Pairs("arrived", "1")); err != nil {
						return err
					}
					<-ss.Context().Done()
					b.canceled <- "Bidi"
					return ss.Context().Err()
				}
				failAfter, _ := strconv.Atoi(first(md, "x-fail-after"))
				if err := b.prelude(ss.Context(), "Bidi", ss.SetHeader, setTrailer(ss)); err != nil {
					return err
				}
				for n := 0; ; n++ {
					if failAfter > 0 && n == failAfter {
						return status.Error(codes.Aborted, "upstream gave up after "+strconv.Itoa(n))
					}
					in := new(wrapperspb.BytesValue)
					err := ss.RecvMsg(in)
					if errors.Is(err, io.EOF) {
						return nil
					}
					if err != nil {
						return err
					}
					if err := ss.SendMsg(in); err != nil {
						return err
					}
				}
			}},
		},
	}, struct{}{})
	go b.srv.Serve(ln)
	t.Cleanup(b.srv.Stop)
	return b
}

func setTrailer(ss grpc.ServerStream) func(metadata.MD) error {
	return func(md metadata.MD) error { ss.SetTrailer(md); return nil }
}

func first(md metadata.MD, k string) string {
	if v := md.Get(k); len(v) > 0 {
		return v[0]
	}
	return ""
}

func headerFor(md metadata.MD) metadata.MD {
	h := metadata.MD{}
	for k, v := range md {
		switch {
		case strings.HasPrefix(k, "x-forwarded-"):
			// Set by the HTTP listener on purpose; its own tests check them.
		case strings.HasPrefix(k, "x-answer-"):
			// Any response header the test asks for (cache-control, ...).
			h[strings.TrimPrefix(k, "x-answer-")] = v
		case strings.HasPrefix(k, "x-"):
			h["echo-"+k] = v
		case strings.HasPrefix(k, "h-"):
			h[k] = v
		}
	}
	return h
}

// prelude applies the metadata-driven behaviour shared by all methods.
func (b *echoBackend) prelude(ctx context.Context, method string, setHeader, setTrailer func(metadata.MD) error) error {
	b.arrived.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	if key := first(md, "x-fail-first"); key != "" {
		b.mu.Lock()
		fail := !b.failedBy[key]
		if b.failedBy == nil {
			b.failedBy = map[string]bool{}
		}
		b.failedBy[key] = true
		b.mu.Unlock()
		if fail {
			return status.Error(codes.Unavailable, "first call fails")
		}
	}
	h := headerFor(md)
	if first(md, "x-traceparent-probe") != "" {
		// Report the trace headers as the upstream received them.
		for _, k := range []string{"traceparent", "tracestate", "baggage"} {
			if v := md.Get(k); len(v) > 0 {
				h["echo-seen-"+k] = v
			}
		}
	}
	if first(md, "x-deadline") != "" {
		if dl, ok := ctx.Deadline(); ok {
			h.Set("deadline-ms", strconv.FormatInt(time.Until(dl).Milliseconds(), 10))
		} else {
			h.Set("deadline-ms", "none")
		}
	}
	if len(h) > 0 {
		if err := setHeader(h); err != nil {
			return err
		}
	}
	t := metadata.MD{}
	for k, v := range md {
		if strings.HasPrefix(k, "t-") {
			t[k] = v
		}
	}
	if len(t) > 0 {
		setTrailer(t)
	}
	if ms, _ := strconv.Atoi(first(md, "x-sleep-ms")); ms > 0 {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if first(md, "x-block") != "" {
		<-ctx.Done()
		b.canceled <- method
		return ctx.Err()
	}
	if c := first(md, "x-status"); c != "" {
		code, _ := strconv.Atoi(c)
		msg := first(md, "x-status-msg-bin")
		st := status.New(codes.Code(code), msg)
		if d, err := st.WithDetails(wrapperspb.String("detail for " + method)); err == nil {
			st = d
		}
		return st.Err()
	}
	return nil
}
