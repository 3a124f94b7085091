// Command peers measures hopwatch side by side with the proxies users would
// otherwise put on a hop: nginx and HAProxy, and no proxy at all (direct),
// and against go-floor, a bare Go proxy on net/http and grpc-go with no
// telemetry (floor.go), which says what the standard stacks cost alone.
// It is the harness behind `make bench-peers` (and `make bench-peers-short`);
// it is not on any request path and never runs in `make test`.
//
// One run starts a backend in this process (a grpc-go server with the demo's
// bot.v1 NLU and Inference services and an net/http server with a small JSON
// endpoint and an SSE stream), renders a configuration for each peer from the
// templates in this folder, and then measures in rounds: every round starts
// each target fresh (in an order rotated from round to round, so drift on a
// shared machine spreads over all of them), runs every workload against it at
// saturation and at a fixed rate below saturation, and stops it. Figures per
// target and workload are the medians over the rounds:
//
//   - proxy CPU per request: utime+stime deltas of the proxy's processes
//     (/proc/<pid>/stat, the whole process tree for nginx's workers) over the
//     saturation run, divided by the requests (messages, events) it carried;
//   - throughput at saturation;
//   - added p50/p99 latency at the fixed rate, against the direct target;
//   - peak RSS: VmHWM, summed over the target's processes;
//   - failed calls: errors and non-2xx/non-OK answers, summed over all runs;
//   - RSS with 10,000 idle HTTP/1.1 keep-alive connections (one request
//     each), on a freshly started proxy (-idle-conns; HAProxy left out).
//
// Load generators are the usual outside programs: ghz (gRPC), wrk (HTTP/1.1
// at saturation) and h2load (h2c, SSE and every fixed-rate HTTP run, whose
// per-request log gives exact percentiles). The OTLP variant exports to a
// minimal OTLP/gRPC trace sink in this process that counts and drops spans,
// so the exporter's cost is hopwatch's own and the sink's is not measured.
//
// The harness asserts nothing about speed: it reports. It fails only when a
// tool is missing or a target cannot start.
package main
