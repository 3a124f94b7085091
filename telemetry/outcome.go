package telemetry

import (
	"strconv"

	"google.golang.org/grpc/codes"
)

// grpcCodeNumber maps the code label (codes.Code.String()) back to its
// number for the rpc.grpc.status_code attribute.
var grpcCodeNumber = func() map[string]int {
	m := make(map[string]int, 17)
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		m[c.String()] = int(c)
	}
	return m
}()

// GRPCOutcome classifies a finished gRPC call. canceled says the client
// went away (its context ended first): that is never the upstream's error.
// Codes that report the caller's mistake (NotFound, InvalidArgument, ...)
// are "ok" from the hop's point of view, as OpenTelemetry's semantic
// conventions treat them for server spans; the code label keeps them apart.
func GRPCOutcome(c codes.Code, canceled bool) Outcome {
	switch {
	case canceled:
		return OutcomeCanceled
	case c == codes.DeadlineExceeded:
		return OutcomeTimeout
	case c == codes.Unknown, c == codes.Unimplemented, c == codes.Internal,
		c == codes.Unavailable, c == codes.DataLoss, c == codes.ResourceExhausted,
		c > codes.Unauthenticated: // a number outside the defined codes is Unknown (see codeLabel)
		return OutcomeError
	}
	return OutcomeOK
}

// HTTPOutcome classifies a finished HTTP exchange: 5xx is the upstream's
// (or the proxy's) failure, 504 a timeout, 4xx the client's business.
func HTTPOutcome(status int, canceled bool) Outcome {
	switch {
	case canceled:
		return OutcomeCanceled
	case status == 504:
		return OutcomeTimeout
	case status >= 500:
		return OutcomeError
	}
	return OutcomeOK
}

// HTTPCode is the code label of an HTTP status, without allocating: a
// status outside 100–599 (which an upstream can send, RFC 9110 section
// 15 only defines those classes) is "other", so labels stay a fixed set.
func HTTPCode(status int) string {
	if status >= 100 && status < 600 {
		return statusText[status-100]
	}
	return otherCode
}

var statusText = func() [500]string {
	var a [500]string
	for i := range a {
		a[i] = strconv.Itoa(i + 100)
	}
	return a
}()
