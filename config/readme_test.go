package config_test

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/internal/testkit"
)

// TestReadmeExample keeps the README's configuration reference true: its
// example must load without errors.
func TestReadmeExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "## Configuration reference")
	if !ok {
		t.Fatal("README has no configuration reference")
	}
	_, rest, ok = strings.Cut(rest, "```yaml\n")
	if !ok {
		t.Fatal("no yaml block in the configuration reference")
	}
	example, _, _ := strings.Cut(rest, "```")
	if _, err := config.Parse("README.md", []byte(example)); err != nil {
		t.Fatalf("the README example does not load:\n%v", err)
	}
}

// TestReadmeConversationExample keeps the conversation section's example
// true: it loads, next to a route named as its entry route, and
// says nothing the defaults do not.
func TestReadmeConversationExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "## Conversation signals")
	if !ok {
		t.Fatal("README has no conversation section")
	}
	_, rest, ok = strings.Cut(rest, "```yaml\n")
	if !ok {
		t.Fatal("no yaml block in the conversation section")
	}
	example, _, _ := strings.Cut(rest, "```")
	const routes = `listeners: [{name: web, address: "127.0.0.1:7080", protocol: http}]
upstreams: [{name: gateway, protocol: http, endpoints: ["127.0.0.1:7201"]}]
routes: [{name: chat, listener: web, upstream: gateway}]
`
	cfg, err := config.Parse("README.md", []byte(routes+example))
	if err != nil {
		t.Fatalf("the README conversation example does not load:\n%v", err)
	}
	def, err := config.Parse("defaults", []byte(routes+"conversation: {entry_routes: [chat]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Conversation.FrustrationKeywords) == 0 {
		cfg.Conversation.FrustrationKeywords = nil // [] as written, nil by default: both off
	}
	if !reflect.DeepEqual(cfg.Conversation, def.Conversation) {
		t.Errorf("the README example differs from the defaults:\n%+v\n%+v", *cfg.Conversation, *def.Conversation)
	}
}

// TestReadmeTLSExample keeps the TLS example of the configuration
// reference true: it loads once the files it names exist.
func TestReadmeTLSExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "**TLS.**")
	if !ok {
		t.Fatal("README has no TLS section")
	}
	_, rest, ok = strings.Cut(rest, "```yaml\n")
	if !ok {
		t.Fatal("no yaml block in the TLS section")
	}
	example, _, _ := strings.Cut(rest, "```")
	dir := t.TempDir()
	ca := testkit.NewCA(t, "test CA")
	server := ca.Issue(t, testkit.Leaf{CommonName: "hopwatch"})
	client := ca.Issue(t, testkit.Leaf{CommonName: "hopwatch-client"})
	if err := os.Mkdir(filepath.Join(dir, "tls"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"ca.crt": ca.PEM, "server.crt": server.CertPEM, "server.key": server.KeyPEM,
		"client.crt": client.CertPEM, "client.key": client.KeyPEM,
	} {
		testkit.WriteFile(t, filepath.Join(dir, "tls"), name, data)
	}
	t.Chdir(dir)
	if _, err := config.Parse("README.md", []byte(example)); err != nil {
		t.Fatalf("the README TLS example does not load:\n%v", err)
	}
}
