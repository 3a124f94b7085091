package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/internal/testkit"
	"github.com/hopwatch/hopwatch/proxy"
	"github.com/hopwatch/hopwatch/routes"
)

// interopInstall is how .ci/run (and a developer) builds grpc-go's interop
// programs, at the grpc version of go.mod (tools/grpcinterop pins it).
const interopInstall = "make e2e-tools (builds bin/interop-client and bin/interop-server from tools/grpcinterop)"

// interopCases are the grpc-go interop client's test cases that need no
// credentials, plus its two soak cases (ten calls each, the second on a
// new channel every time).
var interopCases = []string{
	"empty_unary", "large_unary", "client_streaming", "server_streaming", "ping_pong",
	"empty_stream", "timeout_on_sleeping_server", "cancel_after_begin", "cancel_after_first_response",
	"custom_metadata", "status_code_and_message", "special_status_message",
	"unimplemented_method", "unimplemented_service", "rpc_soak", "channel_soak",
}

// TestInterop runs grpc-go's interop client against its interop server
// through every listener × upstream protocol that can carry gRPC: the
// gRPC listener to a grpc and to an h2c upstream, and the HTTP listener
// (which proxies gRPC that arrives there) to a grpc and to an h2c
// upstream. Every case must pass on every path: the proxy is transparent
// to statuses, messages, metadata, deadlines and cancellation.
func TestInterop(t *testing.T) {
	client := needProgram(t, interopInstall, os.Getenv("HOPWATCH_INTEROP_CLIENT"), "../bin/interop-client")
	server := needProgram(t, interopInstall, os.Getenv("HOPWATCH_INTEROP_SERVER"), "../bin/interop-server")
	checkInteropPin(t)

	port := freePort(t)
	srv := startProcess(t, server, "--port="+strconv.Itoa(port))
	eventually(t, 30*time.Second, "interop server listening", srv, func() error { return dialable(loopback(port)) })

	paths := []struct {
		name, listener, upstream string
	}{
		{"grpc listener, grpc upstream", routes.ListenerGRPC, routes.UpstreamGRPC},
		{"grpc listener, h2c upstream", routes.ListenerGRPC, routes.UpstreamH2C},
		{"http listener, grpc upstream", routes.ListenerHTTP, routes.UpstreamGRPC},
		{"http listener, h2c upstream", routes.ListenerHTTP, routes.UpstreamH2C},
	}
	spec := &routes.Spec{}
	for i, pa := range paths {
		n := strconv.Itoa(i)
		spec.Listeners = append(spec.Listeners, routes.Listener{Name: "l" + n, Address: "127.0.0.1:0", Protocol: pa.listener})
		spec.Routes = append(spec.Routes, routes.Route{Name: "r" + n, Listener: "l" + n, Upstream: "u" + n})
		spec.Upstreams = append(spec.Upstreams, routes.Upstream{Name: "u" + n, Protocol: pa.upstream, Endpoints: []string{loopback(port)}})
	}
	p := proxy.New(proxy.Options{Logger: testkit.Logger(t)})
	if err := p.Apply(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
	})

	for i, pa := range paths {
		_, portStr, err := net.SplitHostPort(p.Addr("l" + strconv.Itoa(i)).String())
		if err != nil {
			t.Fatal(err)
		}
		t.Run(pa.name, func(t *testing.T) {
			passed := 0
			for _, tc := range interopCases {
				if err := runInterop(client, portStr, tc); err != nil {
					t.Errorf("%s: %v", tc, err)
					continue
				}
				passed++
			}
			t.Logf("%s: %d/%d interop cases passed", pa.name, passed, len(interopCases))
		})
	}
}

// runInterop runs one interop case against the proxy's port.
func runInterop(bin, port, tc string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--server_host=127.0.0.1", "--server_port="+port,
		"--use_tls=false", "--test_case="+tc, "--soak_iterations=10").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return nil
}

// checkInteropPin fails the test when tools/grpcinterop builds the interop
// programs from another grpc-go than the proxy's go.mod: they would test
// another version's behaviour.
func checkInteropPin(t *testing.T) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^\s*google\.golang\.org/grpc (v\S+)`)
	version := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		m := re.FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s names no google.golang.org/grpc version", path)
		}
		return string(m[1])
	}
	if ours, theirs := version("../go.mod"), version("../tools/grpcinterop/go.mod"); ours != theirs {
		t.Fatalf("tools/grpcinterop builds the interop programs with grpc %s, go.mod has %s: make them match", theirs, ours)
	}
}
