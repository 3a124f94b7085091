package telemetry

import (
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
)

// Label values that come from a request or a response are bounded here,
// whatever listener the request came in on, before they become a metric
// label, a span name or a span in the trace store: a method name is chosen
// by the client (64 long names once made every /metrics scrape 1.27 GB,
// issue 8), a gRPC status number by the upstream. Each function returns
// its argument or a constant, so it never allocates.

// MaxMethodLabelLen is the longest gRPC method name kept as a label or span
// name; a longer one is recorded as "other". Real names are far shorter
// ("/google.cloud.dialogflow.cx.v3.Sessions/StreamingDetectIntent" is 62).
const MaxMethodLabelLen = 128

// Fixed label values for what is out of bounds.
const (
	// otherHTTPMethod is any HTTP method outside RFC 9110's registered
	// set (any token is a valid method, so there is no other bound).
	otherHTTPMethod = "OTHER"
	// otherCode is a code label that is neither a gRPC code name nor an
	// HTTP status from 100 to 599.
	otherCode = "other"
)

// methodLabel bounds the method of a request: on gRPC listeners the full
// method, on HTTP listeners the HTTP method, or the URL path of gRPC
// carried over h2c (which starts with "/"). A gRPC method must be
// well-formed and at most MaxMethodLabelLen long, else it is "other".
func methodLabel(m string, grpc bool) string {
	if grpc || strings.HasPrefix(m, "/") {
		if validGRPCMethod(m) {
			return m
		}
		return otherMethod
	}
	switch m {
	// Constants rather than m: the label must not pin the request's
	// memory.
	case http.MethodGet:
		return http.MethodGet
	case http.MethodHead:
		return http.MethodHead
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodConnect:
		return http.MethodConnect
	case http.MethodOptions:
		return http.MethodOptions
	case http.MethodTrace:
		return http.MethodTrace
	}
	return otherHTTPMethod
}

// validGRPCMethod reports whether m is "/" service "/" method as gRPC
// spells a path (PROTOCOL-HTTP2.md, ":path"), with protobuf identifiers:
// the service a dot-separated package path and name, the method one
// identifier, [A-Za-z_][A-Za-z0-9_]* each. At most MaxMethodLabelLen bytes.
func validGRPCMethod(m string) bool {
	if len(m) < 4 || len(m) > MaxMethodLabelLen || m[0] != '/' {
		return false
	}
	slash := false     // the service/method separator was seen
	identStart := true // the next byte starts an identifier
	for i := 1; i < len(m); i++ {
		c := m[i]
		switch {
		case c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z':
			identStart = false
		case '0' <= c && c <= '9':
			if identStart {
				return false
			}
		case c == '.' && !slash, c == '/' && !slash:
			if identStart {
				return false
			}
			slash = c == '/'
			identStart = true
		default:
			return false
		}
	}
	return slash && !identStart
}

// codeLabel bounds a code label to a fixed set: "" (no response), the
// seventeen gRPC code names, the HTTP statuses 100 to 599. grpc-go names
// a status number outside the defined codes "Code(n)": that is Unknown,
// as grpc-java's Status.fromCodeValue maps it. Anything else is "other".
func codeLabel(code string) string {
	if code == "" {
		return code
	}
	if _, ok := grpcCodeNumber[code]; ok {
		return code
	}
	if n, ok := httpStatusNumber(code); ok && n >= 100 && n <= 599 {
		return code
	}
	if strings.HasPrefix(code, "Code(") {
		return codes.Unknown.String()
	}
	return otherCode
}
