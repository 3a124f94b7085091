package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors the proxy itself produces. Every one becomes a response in one place:
// grpcError for gRPC listeners, writeError for HTTP ones (which also speaks
// gRPC's error format to gRPC clients).
var (
	// errNoRoute: nothing in the table matches; never forwarded.
	errNoRoute = errors.New("no route")
	// errUnreachable: no endpoint of the upstream accepted a connection.
	errUnreachable = errors.New("upstream unreachable")
	// errTimeout: the route timeout or the client deadline ran out.
	errTimeout = errors.New("upstream timeout")
	// errCanceled: the client went away.
	errCanceled = errors.New("client canceled")
	// errBadGateway: the upstream broke the exchange (reset, bad response).
	errBadGateway = errors.New("bad upstream response")
	// errBadRequest: the request is refused before routing (an ambiguous
	// path, a CONNECT); never forwarded.
	errBadRequest = errors.New("bad request")
)

// upstreamError classifies an error from an upstream attempt. A status error
// from grpc-go is passed through untouched (it is the upstream's answer or
// grpc-go's own precise account of the failure).
func upstreamError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errRejected), errors.Is(err, errBodyTimeout):
		return err
	case errors.As(err, new(*errMessageTooLarge)):
		return err
	case errors.Is(err, context.Canceled):
		return fmt.Errorf("%w: %w", errCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %w", errTimeout, err)
	case isTLSError(err):
		return fmt.Errorf("%w: %w", errUpstreamTLS, err)
	case errors.Is(err, errNoEndpoint), isDialError(err):
		return fmt.Errorf("%w: %w", errUnreachable, err)
	case isHeaderTimeout(err):
		return fmt.Errorf("%w: %w", errTimeout, err)
	}
	if re, ok := asReset(err); ok {
		return re
	}
	if s, ok := status.FromError(err); ok {
		// upstreamError sees gRPC errors only from opening the upstream
		// stream (the upstream's own statuses arrive later, from RecvMsg,
		// and go to the client untouched). grpc-go creates a stream without
		// waiting for the server, so UNAVAILABLE here is its account of a
		// connection that could not be made ("connection error: desc =
		// transport: Error while dialing ..."): the upstream is unreachable,
		// in the same words on every listener.
		if s.Code() == codes.Unavailable {
			return fmt.Errorf("%w: %w", errUnreachable, err)
		}
		return err
	}
	return fmt.Errorf("%w: %w", errBadGateway, err)
}

// grpcError turns a proxy error into the status the gRPC client sees.
func grpcError(err error, method string) error {
	if s, ok := status.FromError(err); ok && !isProxyError(err) {
		return s.Err()
	}
	code, msg := classify(err)
	if errors.Is(err, errNoRoute) {
		msg = "hopwatch: no route for " + method
	}
	return status.Error(code, msg)
}

func isProxyError(err error) bool {
	for _, e := range []error{errNoRoute, errUpstreamTLS, errUnreachable, errTimeout, errCanceled, errBadGateway, errUpstreamReset, errRejected, errBodyTimeout, errBadRequest} {
		if errors.Is(err, e) {
			return true
		}
	}
	return errors.As(err, new(*errMessageTooLarge))
}

// classify maps a proxy error to a gRPC code and a message that names
// hopwatch, so that nobody mistakes it for the upstream's own answer. The
// messages of upstream failures are fixed ("hopwatch: upstream
// unreachable"): the wrapped cause (grpc-go's or net's text, with upstream
// addresses) is for logs and spans, not for the client.
func classify(err error) (codes.Code, string) {
	switch {
	case errors.Is(err, errNoRoute):
		return codes.Unimplemented, "hopwatch: no route"
	case errors.As(err, new(*errMessageTooLarge)):
		return codes.ResourceExhausted, "hopwatch: " + err.Error()
	case errors.Is(err, errBadRequest):
		return codes.InvalidArgument, "hopwatch: " + err.Error()
	case errors.Is(err, errOverloaded):
		return codes.ResourceExhausted, "hopwatch: upstream " + err.Error()
	case errors.Is(err, errBreakerOpen):
		return codes.Unavailable, "hopwatch: upstream " + err.Error()
	case errors.Is(err, errUpstreamTLS):
		return codes.Unavailable, "hopwatch: " + errUpstreamTLS.Error()
	case errors.Is(err, errUnreachable):
		return codes.Unavailable, "hopwatch: " + errUnreachable.Error()
	case errors.Is(err, errTimeout):
		return codes.DeadlineExceeded, "hopwatch: " + errTimeout.Error()
	case errors.Is(err, errBodyTimeout):
		return codes.DeadlineExceeded, "hopwatch: " + errBodyTimeout.Error()
	case errors.Is(err, errCanceled):
		return codes.Canceled, "hopwatch: " + errCanceled.Error()
	case errors.Is(err, errUpstreamReset):
		re, _ := asReset(err)
		return resetCode(context.Background(), re.code), "hopwatch: " + errUpstreamReset.Error() + " (" + re.code.String() + ")"
	case errors.Is(err, errBadGateway):
		return codes.Unavailable, "hopwatch: " + errBadGateway.Error()
	default:
		return codes.Unavailable, "hopwatch: " + err.Error()
	}
}

// isHeaderTimeout reports http.Transport's own "timeout awaiting response
// headers" (HTTP/1.1 and HTTP/2 alike: a net.Error that is a timeout).
func isHeaderTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() && !isDialError(err)
}

// httpStatus maps a proxy error to an HTTP status.
func httpStatus(err error) int {
	switch {
	case errors.Is(err, errNoRoute):
		return http.StatusNotFound
	case errors.As(err, new(*errMessageTooLarge)):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, errUnreachable), errors.Is(err, errRejected):
		return http.StatusServiceUnavailable
	case errors.Is(err, errTimeout):
		return http.StatusGatewayTimeout
	case errors.Is(err, errBodyTimeout):
		return http.StatusRequestTimeout
	case errors.Is(err, errCanceled):
		// nginx's 499: nobody reads it, but logs and metrics can tell a
		// client that left from an upstream that failed.
		return 499
	default:
		return http.StatusBadGateway
	}
}

// writeError answers an HTTP-listener request the proxy could not forward.
// gRPC clients get a trailers-only gRPC error (HTTP 200, grpc-status), as the
// gRPC over HTTP/2 spec requires; others get a plain-text status.
func writeError(w http.ResponseWriter, r *http.Request, err error) {
	delete(w.Header(), "Date") // our own answer: let net/http date it
	if isGRPCRequest(r) {
		code, msg := classify(err)
		if errors.Is(err, errNoRoute) {
			msg = "hopwatch: no route for " + r.URL.Path
		}
		h := w.Header()
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(int(code)))
		h.Set("Grpc-Message", encodeGRPCMessage(msg))
		w.WriteHeader(http.StatusOK)
		return
	}
	code := httpStatus(err)
	_, msg := classify(err)
	if errors.Is(err, errNoRoute) {
		msg = "hopwatch: no route for " + r.Method + " " + r.URL.Path
	}
	http.Error(w, msg, code)
}

func isGRPCRequest(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// encodeGRPCMessage percent-encodes a grpc-message value (gRPC over HTTP/2
// spec: printable ASCII except '%' is sent as is).
func encodeGRPCMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// isUnavailable reports a gRPC UNAVAILABLE from stream creation: the
// connection could not carry the call, so nothing reached the upstream.
func isUnavailable(err error) bool {
	return status.Code(err) == codes.Unavailable
}
