package admin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func startAdmin(t *testing.T, opts Options) *Server {
	t.Helper()
	s := New(opts)
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

// rawGet sends a GET for path with exactly the given Host line (none when
// host is "-"), over a fresh connection, and returns the status.
func rawGet(t *testing.T, addr, path, host string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\n"
	if host == "-" {
		req = "GET " + path + " HTTP/1.0\r\n"
	} else {
		req += "Host: " + host + "\r\n"
	}
	fmt.Fprintf(c, "%sConnection: close\r\n\r\n", req)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestAdminHost: the admin server answers loopback names, IP literals and
// the names listed in allowed_hosts, and refuses any other Host with 403,
// so that a DNS-rebinding page (evil.example resolving to 127.0.0.1) cannot
// read /config or /api/* from a victim's browser.
func TestAdminHost(t *testing.T) {
	s := startAdmin(t, Options{
		Config:       func() any { return map[string]any{"file": "secret-layout.yaml"} },
		AllowedHosts: []string{"hopwatch.monitoring.svc"},
	})
	addr := s.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	for _, tc := range []struct {
		name, host string
		ok         bool
	}{
		{"IPv4 loopback with port", "127.0.0.1:" + port, true},
		{"IPv4 loopback", "127.0.0.1", true},
		{"other IPv4 literal (the admin's own address)", "10.1.2.3:" + port, true},
		{"IPv6 loopback", "[::1]:" + port, true},
		{"IPv6 loopback without port", "[::1]", true},
		{"localhost", "localhost:" + port, true},
		{"localhost upper case, trailing dot", "LOCALHOST.:" + port, true},
		{"subdomain of localhost", "app.localhost", true},
		{"allowed name", "hopwatch.monitoring.svc:" + port, true},
		{"allowed name, case", "HopWatch.Monitoring.SVC", true},
		{"no Host (HTTP/1.0)", "-", true},
		{"rebinding name", "evil.example:" + port, false},
		{"rebinding name without port", "evil.example", false},
		{"localhost as a prefix", "localhost.evil.example", false},
		{"loopback-looking name", "127.0.0.1.nip.io", false},
		{"suffix of an allowed name", "x.hopwatch.monitoring.svc", false},
	} {
		for _, path := range []string{"/config", "/healthz", "/api/breakers"} {
			t.Run(tc.name+path, func(t *testing.T) {
				st, body := rawGet(t, addr, path, tc.host)
				if tc.ok && st == http.StatusForbidden {
					t.Fatalf("Host %q: 403 %q, want it served", tc.host, body)
				}
				if !tc.ok && (st != http.StatusForbidden || strings.Contains(body, "secret-layout")) {
					t.Fatalf("Host %q: %d %q, want 403", tc.host, st, body)
				}
			})
		}
	}

	// A reload can change the list.
	s.SetAllowedHosts([]string{"other.example"})
	if st, _ := rawGet(t, addr, "/config", "hopwatch.monitoring.svc"); st != http.StatusForbidden {
		t.Fatalf("removed name still served: %d", st)
	}
	if st, _ := rawGet(t, addr, "/config", "other.example"); st != http.StatusOK {
		t.Fatalf("added name refused: %d", st)
	}
}

// TestAdminTimeouts: the documented timeouts are set, and a client that
// never finishes its request headers (slowloris) is disconnected rather
// than holding a connection and a goroutine forever.
func TestAdminTimeouts(t *testing.T) {
	s := New(Options{})
	if s.srv.ReadHeaderTimeout != ReadHeaderTimeout || s.srv.ReadTimeout != ReadTimeout ||
		s.srv.WriteTimeout != WriteTimeout || s.srv.IdleTimeout != IdleTimeout || s.srv.MaxHeaderBytes != MaxHeaderBytes {
		t.Fatalf("server timeouts %v/%v/%v/%v/%d, want the documented ones", s.srv.ReadHeaderTimeout, s.srv.ReadTimeout,
			s.srv.WriteTimeout, s.srv.IdleTimeout, s.srv.MaxHeaderBytes)
	}
	// Shortened here so that the test takes no seconds.
	s.srv.ReadHeaderTimeout = 200 * time.Millisecond
	if err := s.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /config HTTP/1.1\r\nHost: 127.0.0.1\r\n") // never ends the headers
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the server kept a connection with unfinished headers open")
	}
	if strings.Contains(string(b), "200 OK") {
		t.Fatalf("answered an unfinished request: %q", b)
	}
}
