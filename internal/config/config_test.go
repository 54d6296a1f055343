package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	got, err := Parse(nil)
	if err != nil {
		t.Fatalf("empty config: %v", err)
	}
	if got.HTTPS.Listen != "127.0.0.1:8443" || got.Admin.Listen != "127.0.0.1:9090" {
		t.Fatalf("defaults not applied: %+v", got.HTTPS)
	}
}

func TestExampleConfigParses(t *testing.T) {
	data, err := os.ReadFile("../../configs/edgenode.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(data)
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	// The example documents the defaults: parsing it must change nothing.
	d := Default()
	c.Node.ID, d.Node.ID = "", ""
	if a, b := dump(t, c), dump(t, d); a != b {
		t.Errorf("example config differs from Default():\n--- example\n%s\n--- default\n%s", a, b)
	}
}

func TestOverridesAndTypes(t *testing.T) {
	c, err := Parse([]byte(`
node:
  id: fra-1
  drain_timeout: 3s
https:
  limits:
    max_body_bytes: 2MiB
    max_header_bytes: 8KiB
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.ID != "fra-1" || c.Node.DrainTimeout != 3*time.Second {
		t.Errorf("node: %+v", c.Node)
	}
	if c.HTTPS.Limits.MaxBodyBytes != 2<<20 || c.HTTPS.Limits.MaxHeaderBytes != 8<<10 {
		t.Errorf("limits: %+v", c.HTTPS.Limits)
	}
	if c.HTTPS.Limits.IdleTimeout != 120*time.Second {
		t.Errorf("unset key lost its default: %+v", c.HTTPS.Limits)
	}
}

func TestEveryProblemIsReported(t *testing.T) {
	_, err := Parse([]byte(`
node:
  id: Bad_ID
  drain_timout: 3s
https:
  listen: "127.0.0.1:99999"
  certificates:
    - cert_file: /nonexistent/cert.pem
      key_file: /nonexistent/key.pem
  limits:
    idle_timeout: forever
admin:
  listen: nowhere
bogus: 1
`))
	var ps *Problems
	if !errors.As(err, &ps) {
		t.Fatalf("want *Problems, got %v", err)
	}
	msg := err.Error()
	// Unknown keys are reported first, alone: the rest cannot be trusted
	// until the shape is right.
	for _, want := range []string{
		`node.drain_timout (line 4): unknown key; did you mean "drain_timeout"?`,
		`bogus (line 14): unknown key`,
		`https.limits.idle_timeout (line 11)`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
	_, err = Parse([]byte(`
node:
  id: Bad_ID
https:
  listen: "127.0.0.1:99999"
  certificates:
    - cert_file: /nonexistent/cert.pem
      key_file: /nonexistent/key.pem
admin:
  listen: nowhere
dns:
  tcp_max_conns_per_ip: -1
`))
	msg = err.Error()
	for _, want := range []string{
		`node.id: "Bad_ID" is not a valid node id`,
		`https.listen: port "99999"`,
		`https.certificates[0].cert_file: cannot read "/nonexistent/cert.pem"`,
		`https.certificates[0].key_file: cannot read`,
		`admin.listen: "nowhere" is not an address`,
		`dns.tcp_max_conns_per_ip: must not be negative`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}

func TestSecrets(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "token")
	if err := os.WriteFile(f, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EDGENODE_TEST_TOKEN", "from-env")
	for _, tc := range []struct{ yaml, want string }{
		{`admin: {token: inline}`, "inline"},
		{`admin: {token: {file: ` + f + `}}`, "from-file"},
		{`admin: {token: {env: EDGENODE_TEST_TOKEN}}`, "from-env"},
	} {
		c, err := Parse([]byte(tc.yaml))
		if err != nil {
			t.Fatalf("%s: %v", tc.yaml, err)
		}
		got, err := c.Admin.Token.Resolve()
		if err != nil || got != tc.want {
			t.Errorf("%s: got %q, %v; want %q", tc.yaml, got, err, tc.want)
		}
	}
	_, err := Parse([]byte(`admin: {token: {env: EDGENODE_TEST_UNSET_VAR}}`))
	if err == nil || !strings.Contains(err.Error(), "admin.token.env: environment variable EDGENODE_TEST_UNSET_VAR is not set") {
		t.Errorf("unset env: %v", err)
	}
	_, err = Parse([]byte(`admin: {token: {path: x}}`))
	if err == nil || !strings.Contains(err.Error(), "admin.token") {
		t.Errorf("bad secret shape: %v", err)
	}
	// A secret never prints.
	c, _ := Parse([]byte(`admin: {token: hunter2}`))
	if strings.Contains(dump(t, c), "hunter2") {
		t.Error("inline secret printed")
	}
}

func TestDuplicateAddresses(t *testing.T) {
	_, err := Parse([]byte("admin: {listen: \"127.0.0.1:8443\"}\n"))
	if err == nil || !strings.Contains(err.Error(), "admin.listen: 127.0.0.1:8443 is already used by https.listen") {
		t.Fatalf("got %v", err)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"0": 0, "512": 512, "64KiB": 64 << 10, "10 MiB": 10 << 20, "1GB": 1e9, "7B": 7} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("%q: got %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "ten", "1TiB", "99999999999999GiB"} {
		if _, err := ParseByteSize(in); err == nil {
			t.Errorf("%q: want an error", in)
		}
	}
}

// FuzzParse feeds arbitrary bytes to the config parser: it must return a
// config or an error, never panic, and every error must name where it is.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "node: {id: a}", "https:\n  limits:\n    max_body_bytes: 1MiB\n", "admin: {token: {env: X}}",
		"dns:\n  zones:\n    - origin: x.\n", "[1,2]", "node: [1]", "&a x: *a", "node:\n  id: !!binary aGk=\n",
		"https: {certificates: [{cert_file: a, key: {file: b}}]}", "mongo: {replicate: [a.b, '*']}",
		"a: &x [*x]", "{{{{", "node:\n  drain_timeout: 1h\n  tags: [a, b]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, err := Parse(data)
		if err == nil {
			return
		}
		var ps *Problems
		if errors.As(err, &ps) && len(ps.List) == 0 {
			t.Fatal("empty problem list")
		}
	})
}

func dump(t *testing.T, c Config) string {
	t.Helper()
	b, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFleetStorage(t *testing.T) {
	c := Default()
	if got := c.FleetStore(); got != FleetStorageMongo {
		t.Errorf("default with mongo: %q", got)
	}
	c.Mongo.Enabled = false
	if got := c.FleetStore(); got != filepath.Join(c.Node.DataDir, "fleet-tls") {
		t.Errorf("default without mongo: %q", got)
	}
	_, err := Parse([]byte("https: {fleet_storage: mongo}\nmongo: {enabled: false}\n"))
	if err == nil || !strings.Contains(err.Error(), `https.fleet_storage: "mongo" needs mongo.enabled: true`) {
		t.Errorf("mongo storage without mongo: %v", err)
	}
	_, err = Parse([]byte("mongo: {local_only: ['edgenode_fleet.*']}\n"))
	if err == nil || !strings.Contains(err.Error(), `mongo.local_only[0]: "edgenode_fleet.*" covers edgenode_fleet.tls`) {
		t.Errorf("local-only fleet collection: %v", err)
	}
	if _, err := Parse([]byte("https: {fleet_storage: /srv/shared/fleet}\nmongo: {local_only: ['*']}\n")); err != nil {
		t.Errorf("a folder store with everything local: %v", err)
	}
}

func TestFleetSecret(t *testing.T) {
	const good = "0123456789abcdef0123456789abcdef"
	// A node without a mesh needs none (it makes its own).
	if _, err := Parse([]byte("mongo: {enabled: true}\n")); err != nil {
		t.Errorf("a single node without a fleet secret: %v", err)
	}
	// A mesh node must be given the fleet's.
	mesh := "mesh: {enabled: true, seeds: ['127.0.0.2:7946']}\n"
	_, err := Parse([]byte(mesh))
	if err == nil || !strings.Contains(err.Error(), "https.fleet_secret: is required with a mesh") {
		t.Errorf("a mesh node without a fleet secret: %v", err)
	}
	_, err = Parse([]byte(mesh + "https: {fleet_secret: " + good + "}\n"))
	if err != nil && strings.Contains(err.Error(), "fleet_secret") {
		t.Errorf("a mesh node with a fleet secret: %v", err)
	}
	// Not needed with a folder store.
	_, err = Parse([]byte(mesh + "https: {fleet_storage: /srv/shared}\n"))
	if err != nil && strings.Contains(err.Error(), "fleet_secret") {
		t.Errorf("a folder store: %v", err)
	}
	// Too short, wherever it comes from.
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("EDGENODE_TEST_FLEET_SECRET", "")
	for _, v := range []string{"too-short", "{file: " + short + "}", "{env: EDGENODE_TEST_FLEET_SECRET}", good[1:]} {
		_, err := Parse([]byte("https: {fleet_secret: " + v + "}\n"))
		if err == nil || !strings.Contains(err.Error(), "https.fleet_secret: is ") || !strings.Contains(err.Error(), "want at least 32") {
			t.Errorf("fleet_secret %s: %v", v, err)
		}
	}
	_, err = Parse([]byte("https: {fleet_secret: {file: /nonexistent/secret}}\n"))
	if err == nil || !strings.Contains(err.Error(), "https.fleet_secret.file") {
		t.Errorf("a missing secret file: %v", err)
	}
	c, err := Parse([]byte("https: {fleet_secret: " + good + "}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := c.HTTPS.FleetSecret.Resolve(); v != good {
		t.Errorf("resolved %q", v)
	}
	if y := dump(t, c); strings.Contains(y, good) {
		t.Errorf("the dump shows the secret:\n%s", y)
	}
}
