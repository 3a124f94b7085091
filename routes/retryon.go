package routes

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
)

// The retry.on vocabulary lives here rather than in fallback/ because it is
// config syntax: Validate must check it, and routes may not import the
// packages that implement resilience (fallback/ imports routes). What the
// proxy needs at run time is the compiled RetryOn, a few words of bits.

// RetryConnectFailure is the retry.on token for a connection that could not
// be made: nothing reached the upstream, so a retry is always safe.
const RetryConnectFailure = "connect-failure"

// grpcCodes names the gRPC status codes as written in the config: the
// canonical names of the gRPC spec (doc/statuscodes.md) in snake case.
// "canceled" is accepted as well, since Go spells it that way.
var grpcCodes = map[string]codes.Code{
	"ok":                  codes.OK,
	"cancelled":           codes.Canceled,
	"canceled":            codes.Canceled,
	"unknown":             codes.Unknown,
	"invalid_argument":    codes.InvalidArgument,
	"deadline_exceeded":   codes.DeadlineExceeded,
	"not_found":           codes.NotFound,
	"already_exists":      codes.AlreadyExists,
	"permission_denied":   codes.PermissionDenied,
	"resource_exhausted":  codes.ResourceExhausted,
	"failed_precondition": codes.FailedPrecondition,
	"aborted":             codes.Aborted,
	"out_of_range":        codes.OutOfRange,
	"unimplemented":       codes.Unimplemented,
	"internal":            codes.Internal,
	"unavailable":         codes.Unavailable,
	"data_loss":           codes.DataLoss,
	"unauthenticated":     codes.Unauthenticated,
}

// GRPCCode returns the code a config name stands for: "unavailable" →
// codes.Unavailable. Names are the gRPC spec's, in snake case.
func GRPCCode(name string) (codes.Code, bool) {
	c, ok := grpcCodes[name]
	return c, ok
}

// GRPCStatus returns the code and message of a static gRPC answer; an
// empty grpc_code means OK. s must have passed Validate.
func (s *FallbackStatic) GRPCStatus() (codes.Code, string) {
	if s.GRPCCode == "" {
		return codes.OK, ""
	}
	c, _ := GRPCCode(s.GRPCCode)
	return c, s.GRPCMessage
}

// RetryOn is a compiled retry.on list. The zero value retries on nothing.
// It is a small value, safe to copy and to use from many goroutines.
type RetryOn struct {
	grpc    uint32     // bit per gRPC code; codes run 0..16
	http    [10]uint64 // bit per HTTP status 0..639
	connect bool
}

// ErrRetryOn is wrapped by ParseRetryOn's errors.
var ErrRetryOn = errors.New("invalid retry condition")

// ParseRetryOn compiles retry.on tokens: gRPC code names in snake case
// (unavailable, resource_exhausted, ...; not ok), HTTP statuses 400..599 or
// the class 5xx, and connect-failure. Tokens are exact (lowercase); the
// error for a near miss names the intended token.
func ParseRetryOn(tokens []string) (RetryOn, error) {
	var on RetryOn
	for _, tok := range tokens {
		if err := on.add(tok); err != nil {
			return RetryOn{}, err
		}
	}
	return on, nil
}

// add compiles one token into on.
func (on *RetryOn) add(tok string) error {
	switch {
	case tok == RetryConnectFailure:
		on.connect = true
		return nil
	case tok == "5xx":
		for s := 500; s <= 599; s++ {
			on.setHTTP(s)
		}
		return nil
	case tok == "4xx":
		// 4xx says the request is wrong; sending it again gets the same
		// answer. The few worth retrying (408, 425, 429) can be listed.
		return fmt.Errorf("%w %q: retrying every client error repeats the same mistake; list statuses such as 429 instead", ErrRetryOn, tok)
	}
	if tok != "" && tok[0] >= '0' && tok[0] <= '9' {
		s, err := strconv.Atoi(tok)
		if err != nil || s < 400 || s > 599 || strconv.Itoa(s) != tok {
			return fmt.Errorf("%w %q: HTTP statuses worth retrying are 400..599 (e.g. 502, 503, 504) or the class 5xx", ErrRetryOn, tok)
		}
		on.setHTTP(s)
		return nil
	}
	if c, ok := grpcCodes[tok]; ok {
		if c == codes.OK {
			return fmt.Errorf("%w %q: ok is a success, there is nothing to retry", ErrRetryOn, tok)
		}
		on.grpc |= 1 << c
		return nil
	}
	if norm := normalizeToken(tok); norm != tok {
		if c, known := grpcCodes[norm]; known && c != codes.OK || norm == RetryConnectFailure {
			return fmt.Errorf("%w %q: write %s", ErrRetryOn, tok, norm)
		}
	}
	return fmt.Errorf("%w %q: want a gRPC code such as unavailable, an HTTP status such as 503 or 5xx, or connect-failure", ErrRetryOn, tok)
}

// normalizeToken maps the usual spellings of other tools (UNAVAILABLE,
// resource-exhausted, connect_failure) onto ours, for error hints only:
// accepting them would give one setting several spellings in files.
func normalizeToken(tok string) string {
	t := strings.ToLower(tok)
	if strings.ReplaceAll(t, "_", "-") == RetryConnectFailure {
		return RetryConnectFailure
	}
	return strings.ReplaceAll(t, "-", "_")
}

func (on *RetryOn) setHTTP(status int) { on.http[status/64] |= 1 << (status % 64) }

// GRPC reports whether a call that ended with code is worth retrying.
func (on RetryOn) GRPC(code codes.Code) bool {
	return code < 32 && on.grpc&(1<<code) != 0
}

// HTTP reports whether a response with this status is worth retrying.
func (on RetryOn) HTTP(status int) bool {
	return status >= 0 && status < 64*len(on.http) && on.http[status/64]&(1<<(status%64)) != 0
}

// Connect reports whether a failure to connect is worth retrying.
func (on RetryOn) Connect() bool { return on.connect }
