package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
)

// gRPC over an HTTP listener: the client's deadline and the ways an
// upstream stream can end without a status.
//
// The gRPC listener gets both from grpc-go (its server enforces the
// client's grpc-timeout, its client maps an upstream RST_STREAM to a
// status); the HTTP listener sees only HTTP/2, so it does the same here,
// so that a client sees the same status on either listener. Without it, an
// upstream that reset a stream at the call's deadline (grpc-go servers
// send RST_STREAM CANCEL when the deadline passes) answered
// UNAVAILABLE "bad upstream response" instead of DEADLINE_EXCEEDED, and a
// stream cut after its headers reached the client as RST_STREAM
// INTERNAL_ERROR, which grpc-go shows as INTERNAL whatever the cause.

// maxGRPCTimeout bounds a grpc-timeout (at most 8 digits of hours is
// centuries; time.Duration holds about 292 years).
const maxGRPCTimeout = 100 * 365 * 24 * time.Hour

// parseGRPCTimeout reads a grpc-timeout header value: 1 to 8 ASCII digits
// and a unit, H M S m u n (gRPC over HTTP/2, "Timeout"). ok is false for
// anything else, which the proxy then ignores, as grpc-go does not: it
// fails such a call, and the upstream will say so.
func parseGRPCTimeout(v string) (d time.Duration, ok bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	digits := v[:len(v)-1]
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		return 0, false
	}
	if n > int64(maxGRPCTimeout/unit) {
		return maxGRPCTimeout, true
	}
	return time.Duration(n) * unit, true
}

// withGRPCDeadline puts the client's grpc-timeout, if any, on the
// request's context: the call ends there as it would on the gRPC listener
// (DEADLINE_EXCEEDED), and the upstream request is canceled with it. The
// header itself is forwarded as received.
func withGRPCDeadline(ctx context.Context, h http.Header) (context.Context, context.CancelFunc) {
	v := h.Get("Grpc-Timeout")
	if v == "" {
		return ctx, func() {}
	}
	d, ok := parseGRPCTimeout(v)
	if !ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// encodeGRPCTimeout writes d as a grpc-timeout value: the finest unit in
// which it fits in 8 digits, rounded up (as grpc-go does, so that the
// upstream never gets a shorter deadline than there is). An expired
// deadline is "0n".
func encodeGRPCTimeout(d time.Duration) string {
	if d <= 0 {
		return "0n"
	}
	for _, u := range []struct {
		unit time.Duration
		c    byte
	}{{time.Nanosecond, 'n'}, {time.Microsecond, 'u'}, {time.Millisecond, 'm'}, {time.Second, 'S'}, {time.Minute, 'M'}} {
		if n := (d + u.unit - 1) / u.unit; n <= 99999999 {
			return strconv.FormatInt(int64(n), 10) + string(u.c)
		}
	}
	return strconv.FormatInt(int64(min((d+time.Hour-1)/time.Hour, 99999999)), 10) + "H"
}

// propagateGRPCDeadline tells the upstream of a gRPC call the deadline the
// proxy holds it to: the client's grpc-timeout, or the route's timeout if
// that is sooner, less the time already spent, as grpc-go does on the
// gRPC listener. out is ReverseProxy's outgoing copy.
func propagateGRPCDeadline(out *http.Request) {
	if d, ok := out.Context().Deadline(); ok {
		out.Header.Set("Grpc-Timeout", encodeGRPCTimeout(time.Until(d)))
	}
}

// errUpstreamReset: the upstream reset the stream (RST_STREAM) before it
// answered. Its HTTP/2 error code decides the gRPC status.
var errUpstreamReset = errors.New("upstream reset the stream")

// resetError is an upstream RST_STREAM with its code.
type resetError struct {
	code http2.ErrCode
	err  error
}

func (e *resetError) Error() string {
	return fmt.Sprintf("%v (%v): %v", errUpstreamReset, e.code, e.err)
}

func (e *resetError) Unwrap() []error { return []error{errUpstreamReset, e.err} }

// asReset finds an upstream RST_STREAM in err. net/http's bundled HTTP/2
// error converts to x/net's StreamError (net/http h2_error.go).
func asReset(err error) (*resetError, bool) {
	var re *resetError
	if errors.As(err, &re) {
		return re, true
	}
	var se http2.StreamError
	if errors.As(err, &se) {
		return &resetError{code: se.Code, err: err}, true
	}
	return nil, false
}

// resetCode is the gRPC status of a stream the upstream reset, as grpc-go's
// client maps it (internal/transport http_util.go http2ErrConvTab, after
// gRPC over HTTP/2, "Errors"): REFUSED_STREAM means nothing was processed
// (UNAVAILABLE, which clients may retry), CANCEL is a cancellation, and
// a CANCEL once the call's deadline has passed is that deadline (grpc-go
// http2_client.go handleRSTStream: its server resets a stream with CANCEL
// when the deadline fires).
func resetCode(ctx context.Context, code http2.ErrCode) codes.Code {
	switch code {
	case http2.ErrCodeRefusedStream:
		return codes.Unavailable
	case http2.ErrCodeCancel:
		if d, ok := ctx.Deadline(); ok && !d.After(time.Now()) {
			return codes.DeadlineExceeded
		}
		return codes.Canceled
	case http2.ErrCodeFlowControl, http2.ErrCodeEnhanceYourCalm:
		return codes.ResourceExhausted
	case http2.ErrCodeInadequateSecurity:
		return codes.PermissionDenied
	}
	return codes.Internal
}

// grpcEndBody ends a gRPC response whose upstream stream broke after its
// headers (a reset, the route's or the client's deadline) with a status in
// trailers instead of an abort: ReverseProxy aborts a body it cannot copy
// to the end, which net/http sends as RST_STREAM INTERNAL_ERROR. Read
// turns the error into the end of the body and sets grpc-status and
// grpc-message as trailers of res, which ReverseProxy copies once the body
// is done. A client that went away gets nothing (it is gone).
type grpcEndBody struct {
	io.ReadCloser
	res *http.Response
	ctx context.Context
}

func (b *grpcEndBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == nil || errors.Is(err, io.EOF) || b.res.Trailer.Get("Grpc-Status") != "" {
		return n, err
	}
	if errors.Is(b.ctx.Err(), context.Canceled) {
		return n, err // the client left: nobody to tell
	}
	code, msg := b.status(err)
	if b.res.Trailer == nil {
		b.res.Trailer = http.Header{}
	}
	b.res.Trailer.Set("Grpc-Status", strconv.Itoa(int(code)))
	b.res.Trailer.Set("Grpc-Message", encodeGRPCMessage(msg))
	return n, io.EOF
}

func (b *grpcEndBody) status(err error) (codes.Code, string) {
	if b.ctx.Err() != nil {
		return classify(upstreamError(b.ctx.Err()))
	}
	if re, ok := asReset(err); ok {
		return resetCode(b.ctx, re.code), "hopwatch: " + errUpstreamReset.Error() + " (" + re.code.String() + ")"
	}
	return classify(upstreamError(err))
}
