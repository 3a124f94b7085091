package main

import (
	"context"
	"net"
	"sync/atomic"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// sink is a minimal OTLP/gRPC trace receiver: it counts spans and drops
// them, so hopwatch's exporter does all of its work (encode, send) while
// nothing downstream competes for the CPU the way a real backend would.
type sink struct {
	collectortrace.UnimplementedTraceServiceServer
	spans atomic.Int64
	srv   *grpc.Server
}

func startSink(addr string) (*sink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &sink{srv: grpc.NewServer()}
	collectortrace.RegisterTraceServiceServer(s.srv, s)
	go s.srv.Serve(ln)
	return s, nil
}

func (s *sink) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	var n int64
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			n += int64(len(ss.GetSpans()))
		}
	}
	s.spans.Add(n)
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (s *sink) Close() { s.srv.Stop() }
