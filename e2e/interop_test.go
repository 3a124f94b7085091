package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
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

// interopRepeat is how many more times a case is run.
var interopRepeat = map[string]int{
	"timeout_on_sleeping_server": 9, "cancel_after_begin": 9, "cancel_after_first_response": 9,
}

// TestInterop runs grpc-go's interop client against its interop server
// through every listener × upstream protocol that can carry gRPC: the
// gRPC listener (grpc-go's server and the frame relay) to a grpc and to an
// h2c upstream, and the HTTP listener
// (which proxies gRPC that arrives there) to a grpc and to an h2c
// upstream, in cleartext; and over TLS, the gRPC listener to a TLS grpc
// upstream and the HTTP listener to an h2 upstream and to a cleartext one. Every case must pass on every path: the proxy is transparent
// to statuses, messages, metadata, deadlines and cancellation.
func TestInterop(t *testing.T) {
	client := needProgram(t, interopInstall, os.Getenv("HOPWATCH_INTEROP_CLIENT"), "../bin/interop-client")
	server := needProgram(t, interopInstall, os.Getenv("HOPWATCH_INTEROP_SERVER"), "../bin/interop-server")
	checkInteropPin(t)

	// One interop server in cleartext, one over TLS (for the TLS
	// listeners and upstreams), with certificates of a CA made here.
	dir := t.TempDir()
	ca := testkit.NewCA(t, "interop ca")
	kp := ca.Issue(t, testkit.Leaf{CommonName: "localhost", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	caFile := testkit.WriteFile(t, dir, "ca.pem", ca.PEM)
	certFile := testkit.WriteFile(t, dir, "cert.pem", kp.CertPEM)
	keyFile := testkit.WriteFile(t, dir, "key.pem", kp.KeyPEM)
	port, tlsPort := testkit.FreePort(t), testkit.FreePort(t)
	srv := startProcess(t, server, "--port="+strconv.Itoa(port))
	tlsSrv := startProcess(t, server, "--port="+strconv.Itoa(tlsPort), "--use_tls=true",
		"--tls_cert_file="+certFile, "--tls_key_file="+keyFile)
	eventually(t, 30*time.Second, "interop server listening", srv, func() error { return dialable(loopback(port)) })
	eventually(t, 30*time.Second, "TLS interop server listening", tlsSrv, func() error { return dialable(loopback(tlsPort)) })

	// Every listener × upstream protocol that carries gRPC, in cleartext
	// and over TLS on either side.
	paths := []struct {
		name, listener, upstream string
		tlsIn, tlsOut            bool
		relay                    string // listeners[].relay ("": the frame relay)
	}{
		{"grpc-go listener, grpc upstream", routes.ListenerGRPC, routes.UpstreamGRPC, false, false, routes.ListenerRelayMessages},
		{"grpc-go listener, h2c upstream", routes.ListenerGRPC, routes.UpstreamH2C, false, false, routes.ListenerRelayMessages},
		{"grpc relay listener, grpc upstream", routes.ListenerGRPC, routes.UpstreamGRPC, false, false, ""},
		{"grpc relay listener, h2c upstream", routes.ListenerGRPC, routes.UpstreamH2C, false, false, routes.ListenerRelayFrames},
		{"http listener, grpc upstream", routes.ListenerHTTP, routes.UpstreamGRPC, false, false, ""},
		{"http listener, h2c upstream", routes.ListenerHTTP, routes.UpstreamH2C, false, false, ""},
		{"grpc-go tls listener, grpc tls upstream", routes.ListenerGRPC, routes.UpstreamGRPC, true, true, routes.ListenerRelayMessages},
		{"grpc relay tls listener, grpc tls upstream", routes.ListenerGRPC, routes.UpstreamGRPC, true, true, ""},
		{"http tls listener, h2 upstream", routes.ListenerHTTP, routes.UpstreamH2, true, true, ""},
		{"http tls listener, grpc upstream", routes.ListenerHTTP, routes.UpstreamGRPC, true, false, ""},
	}
	spec := &routes.Spec{}
	for i, pa := range paths {
		n := strconv.Itoa(i)
		l := routes.Listener{Name: "l" + n, Address: "127.0.0.1:0", Protocol: pa.listener, Relay: pa.relay}
		if pa.tlsIn {
			l.TLS = &routes.ListenerTLS{CertFile: certFile, KeyFile: keyFile}
		}
		u := routes.Upstream{Name: "u" + n, Protocol: pa.upstream, Endpoints: []string{loopback(port)}}
		if pa.tlsOut {
			u.Endpoints = []string{loopback(tlsPort)}
			u.TLS = &routes.UpstreamTLS{CAFile: caFile}
		}
		spec.Listeners = append(spec.Listeners, l)
		spec.Routes = append(spec.Routes, routes.Route{Name: "r" + n, Listener: "l" + n, Upstream: "u" + n})
		spec.Upstreams = append(spec.Upstreams, u)
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
		var tlsArgs []string
		if pa.tlsIn {
			tlsArgs = []string{"--use_tls=true", "--use_test_ca=true", "--ca_file=" + caFile, "--server_host_override=localhost"}
		}
		t.Run(pa.name, func(t *testing.T) {
			passed := 0
			for _, tc := range interopCases {
				var err error
				// The deadline and cancellation cases race the client's
				// timer against the proxy and the upstream: each runs ten
				// times, so that a status that is wrong only when the race
				// goes one way has more chances to show. (It rarely does:
				// the regression test for the deadline is in proxy/,
				// TestGRPCDeadlineOnHTTPListener, where the upstream
				// resets before the client's own timer can fire.)
				raced := 0
				for range interopRepeat[tc] + 1 {
					err = runInterop(client, portStr, tc, tlsArgs...)
					if err != nil && tc == "cancel_after_begin" && raced < 1 && strings.Contains(err.Error(), "got error code 0, want 1") {
						// The client's own race, not the proxy's: it
						// cancels, then CloseAndRecv sends END_STREAM and
						// reads, and grpc-go's reader picks at random
						// between the canceled context and an answer that
						// already arrived (the upstream, told the stream
						// ended, answers OK). Seen once in CI on a loaded
						// machine (HTTP listener, h2c upstream). Once per
						// path is let through; a second time, or any other
						// failure, fails.
						raced++
						t.Logf("%s: %s: the client's cancel-vs-answer race, run again", pa.name, tc)
						continue
					}
					if err != nil {
						break
					}
				}
				if err != nil {
					t.Errorf("%s: %v", tc, err)
					continue
				}
				passed++
			}
			t.Logf("%s: %d/%d interop cases passed", pa.name, passed, len(interopCases))
		})
	}
}

// runInterop runs one interop case against the proxy's port (in
// cleartext unless tlsArgs say otherwise).
func runInterop(bin, port, tc string, tlsArgs ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"--server_host=127.0.0.1", "--server_port=" + port, "--test_case=" + tc, "--soak_iterations=10"}
	if len(tlsArgs) == 0 {
		tlsArgs = []string{"--use_tls=false"}
	}
	out, err := exec.CommandContext(ctx, bin, append(args, tlsArgs...)...).CombinedOutput()
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
