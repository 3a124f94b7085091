package fallback_test

import (
	"errors"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/hopwatch/hopwatch/fallback"
)

func TestClassifyGRPC(t *testing.T) {
	type want struct{ failure, excluded bool }
	var (
		success  = want{}
		failure  = want{failure: true}
		excluded = want{excluded: true}
	)
	for _, tc := range []struct {
		name     string
		code     codes.Code
		canceled bool
		want     want
	}{
		{"ok", codes.OK, false, success},
		{"client canceled", codes.Canceled, true, excluded},
		{"client canceled wins over unavailable", codes.Unavailable, true, excluded},
		{"canceled upstream side", codes.Canceled, false, failure},
		{"unknown", codes.Unknown, false, failure},
		{"invalid argument", codes.InvalidArgument, false, excluded},
		{"deadline exceeded", codes.DeadlineExceeded, false, failure},
		{"not found", codes.NotFound, false, excluded},
		{"already exists", codes.AlreadyExists, false, excluded},
		{"permission denied", codes.PermissionDenied, false, excluded},
		{"resource exhausted", codes.ResourceExhausted, false, failure},
		{"failed precondition", codes.FailedPrecondition, false, excluded},
		{"aborted", codes.Aborted, false, failure},
		{"out of range", codes.OutOfRange, false, excluded},
		{"unimplemented", codes.Unimplemented, false, failure},
		{"internal", codes.Internal, false, failure},
		{"unavailable", codes.Unavailable, false, failure},
		{"data loss", codes.DataLoss, false, failure},
		{"unauthenticated", codes.Unauthenticated, false, excluded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, e := fallback.ClassifyGRPC(tc.code, tc.canceled)
			if got := (want{f, e}); got != tc.want {
				t.Errorf("ClassifyGRPC(%v, %v) = %+v, want %+v", tc.code, tc.canceled, got, tc.want)
			}
		})
	}
}

func TestClassifyHTTP(t *testing.T) {
	type want struct{ failure, excluded bool }
	var (
		success  = want{}
		failure  = want{failure: true}
		excluded = want{excluded: true}
		errReset = errors.New("connection reset by peer")
	)
	for _, tc := range []struct {
		name     string
		status   int
		err      error
		canceled bool
		want     want
	}{
		{"200", 200, nil, false, success},
		{"204", 204, nil, false, success},
		{"304", 304, nil, false, success},
		{"400", 400, nil, false, excluded},
		{"404", 404, nil, false, excluded},
		{"499", 499, nil, false, excluded},
		{"429 is overload", 429, nil, false, failure},
		{"500", 500, nil, false, failure},
		{"502", 502, nil, false, failure},
		{"503", 503, nil, false, failure},
		{"599", 599, nil, false, failure},
		{"transport error", 0, errReset, false, failure},
		{"client canceled", 0, errReset, true, excluded},
		{"client canceled after 503", 503, nil, true, excluded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, e := fallback.ClassifyHTTP(tc.status, tc.err, tc.canceled)
			if got := (want{f, e}); got != tc.want {
				t.Errorf("ClassifyHTTP(%d, %v, %v) = %+v, want %+v", tc.status, tc.err, tc.canceled, got, tc.want)
			}
		})
	}
}
