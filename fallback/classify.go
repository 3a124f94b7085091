package fallback

import (
	"net/http"

	"google.golang.org/grpc/codes"
)

// ClassifyGRPC says how a gRPC call's outcome counts for the breaker.
// clientCanceled is true when the inbound call's own context ended (the
// client canceled, or its deadline passed) before the upstream answered:
// that is the client's doing, not the upstream's. Codes that say the
// request itself was wrong are excluded too, since a breaker that trips on
// bad requests would punish every client for one client's bug. Everything
// else that is not OK is a failure, DEADLINE_EXCEEDED from the route
// timeout included: a slow upstream is what breakers are for.
func ClassifyGRPC(code codes.Code, clientCanceled bool) (failure, excluded bool) {
	if clientCanceled {
		return false, true
	}
	switch code {
	case codes.OK:
		return false, false
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.PermissionDenied,
		codes.Unauthenticated, codes.FailedPrecondition, codes.OutOfRange:
		return false, true
	}
	return true, false
}

// ClassifyHTTP says how an HTTP exchange counts for the breaker.
// transportErr is the error of the round trip (no response); clientCanceled
// is as in ClassifyGRPC. 5xx and transport errors are failures, other 4xx
// are excluded as client errors, the rest succeed. 429 Too Many Requests is
// the exception among 4xx: it is the upstream saying it is overloaded, the
// HTTP twin of RESOURCE_EXHAUSTED, and backing off from it is the breaker's
// job.
func ClassifyHTTP(status int, transportErr error, clientCanceled bool) (failure, excluded bool) {
	switch {
	case clientCanceled:
		return false, true
	case transportErr != nil, status >= 500, status == http.StatusTooManyRequests:
		return true, false
	case status >= 400:
		return false, true
	}
	return false, false
}
