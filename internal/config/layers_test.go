package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeLayers writes the main file edgenode.yaml and the given drop-ins
// (name → YAML) in a new folder and returns the main file's path.
func writeLayers(t *testing.T, main string, dropIns map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "conf.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "edgenode.yaml")
	if err := os.WriteFile(path, []byte(main), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, data := range dropIns {
		if err := os.WriteFile(filepath.Join(dir, "conf.d", name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

const layersMain = `node:
  id: shared
  region: eu
  tags: [edge, eu]
mesh:
  seeds: ["127.0.0.2:7946", "127.0.0.3:7946"]
cdn:
  origin:
    s3:
      buckets: {alpha: a-bucket, beta: b-bucket}
`

// TestDropInsMergeInOrder: drop-ins apply over the main file in name
// order; sections and maps merge key by key, lists and scalars are
// replaced; files that are not *.yaml, or hidden, are not read.
func TestDropInsMergeInOrder(t *testing.T) {
	path := writeLayers(t, layersMain, map[string]string{
		"20-node.yaml": "node:\n  id: fra-1\n  latitude: 50.1\n",
		"10-site.yaml": "node:\n  id: site\n  tags: [site]\n  drain_timeout: 5s\ncdn:\n  origin:\n    s3:\n      buckets: {beta: b2, gamma: g}\n",
		"30-mesh.yaml": "mesh:\n  seeds: [\"127.0.0.9:7946\"]\n",
		// Never read: each would fail if it were.
		"20-node.yaml.dpkg-old": "bogus: 1\n",
		".10-editor.yaml":       "bogus: 1\n",
		"README":                "bogus: 1\n",
	})
	l, err := LoadLayers(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := l.Config
	if c.Node.ID != "fra-1" || c.Node.Region != "eu" || c.Node.Latitude != 50.1 || c.Node.DrainTimeout != 5*time.Second {
		t.Errorf("node: id %q region %q latitude %v drain %v; want fra-1 (20-node over 10-site), eu (main), 50.1, 5s",
			c.Node.ID, c.Node.Region, c.Node.Latitude, c.Node.DrainTimeout)
	}
	if !slices.Equal(c.Node.Tags, []string{"site"}) || !slices.Equal(c.Mesh.Seeds, []string{"127.0.0.9:7946"}) {
		t.Errorf("lists are replaced whole: tags %q, seeds %q", c.Node.Tags, c.Mesh.Seeds)
	}
	want := map[string]string{"alpha": "a-bucket", "beta": "b2", "gamma": "g"}
	if got := c.CDN.Origin.S3.Buckets; len(got) != len(want) || got["alpha"] != want["alpha"] || got["beta"] != want["beta"] || got["gamma"] != want["gamma"] {
		t.Errorf("maps merge key by key: buckets %v, want %v", got, want)
	}
	if c.HTTPS.Listen != Default().HTTPS.Listen {
		t.Errorf("a key no layer writes lost its default: %q", c.HTTPS.Listen)
	}
	dir := filepath.Dir(path)
	wantFiles := []string{path, filepath.Join(dir, "conf.d", "10-site.yaml"), filepath.Join(dir, "conf.d", "20-node.yaml"), filepath.Join(dir, "conf.d", "30-mesh.yaml")}
	if !slices.Equal(l.Files, wantFiles) {
		t.Errorf("files %q, want %q", l.Files, wantFiles)
	}
	for p, want := range map[string]Source{
		"node.id":                         {File: wantFiles[2], Line: 2},
		"node.region":                     {File: path, Line: 3},
		"node.tags":                       {File: wantFiles[1], Line: 3},
		"node.longitude":                  {},
		"mesh.seeds[0]":                   {File: wantFiles[3], Line: 2},
		"cdn.origin.s3.buckets.alpha":     {File: path, Line: 10},
		"cdn.origin.s3.buckets.gamma":     {File: wantFiles[1], Line: 8},
		"https.limits.max_body_bytes":     {},
		"dns.zones[0].records[0].value":   {},
		"cdn.origin.s3.buckets.beta":      {File: wantFiles[1], Line: 8},
		"node.drain_timeout":              {File: wantFiles[1], Line: 4},
		"cdn.origin.s3.secret_access_key": {},
	} {
		if got := l.Source(p); got != want {
			t.Errorf("source of %s: %v, want %v", p, got, want)
		}
	}

	// Without a conf.d folder the main file is the config.
	alone := filepath.Join(t.TempDir(), "edgenode.yaml")
	os.WriteFile(alone, []byte(layersMain), 0o600)
	if l, err := LoadLayers(alone, nil); err != nil || l.Config.Node.ID != "shared" {
		t.Errorf("no drop-ins: %q, %v", l.Config.Node.ID, err)
	}
}

// TestDropInProblemsNameTheFile: an unknown key, a wrong value or bad YAML
// in a drop-in is reported with the drop-in's file and line.
func TestDropInProblemsNameTheFile(t *testing.T) {
	path := writeLayers(t, layersMain, map[string]string{
		"10-ok.yaml":  "node:\n  region: us\n",
		"20-bad.yaml": "node:\n  latitude: 1\n  idd: fra-1\nhttps:\n  limits:\n    idle_timeout: forever\n",
		"30-bad.yaml": "node: [\n",
	})
	_, err := LoadLayers(path, nil)
	bad := filepath.Join(filepath.Dir(path), "conf.d", "20-bad.yaml")
	for _, want := range []string{
		`node.idd (line 3 of ` + bad + `): unknown key; did you mean "id"?`,
		`https.limits.idle_timeout (line 6 of ` + bad + `): cannot use the string`,
		filepath.Join(filepath.Dir(path), "conf.d", "30-bad.yaml") + `: is not valid YAML`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
	// A value every layer accepts but the merged config does not is
	// reported with where it was set.
	path = writeLayers(t, layersMain, map[string]string{"50-node.yaml": "node:\n  region: us\n  id: Fra_1\n"})
	_, err = LoadLayers(path, nil)
	want := `node.id: "Fra_1" is not a valid node id: use 1-63 lower-case letters, digits and '-' (it becomes a DNS label) (set at ` +
		filepath.Join(filepath.Dir(path), "conf.d", "50-node.yaml") + ":3)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("missing %q in %v", want, err)
	}
}

// TestEnvOverrides: EDGENODE_<KEY__PATH> variables apply after the files;
// scalars as written, lists and sections as YAML, deeper keys last; other
// EDGENODE_ variables are not config.
func TestEnvOverrides(t *testing.T) {
	path := writeLayers(t, layersMain, map[string]string{"10-node.yaml": "node:\n  id: from-drop-in\n"})
	env := []string{
		"PATH=/usr/bin",
		"EDGENODE_NODE__ID=node7",
		"EDGENODE_NODE={id: overridden, region: ap, latitude: 1.5}",
		"EDGENODE_MESH__SEEDS=[\"127.0.0.4:7946\", \"127.0.0.5:7946\"]",
		"EDGENODE_HTTPS__LIMITS__MAX_BODY_BYTES=2MiB",
		"EDGENODE_HTTPS__HTTP3=false",
		"EDGENODE_MONGO__LOG_RETENTION=0",
		"EDGENODE_ADMIN__TOKEN=s3cret #not a comment",
		"EDGENODE_CDN__ORIGIN__S3__BUCKETS__DELTA=d-bucket",
		"EDGENODE_BIN=/usr/local/bin/edgenode",  // scripts/cluster's, not config
		"EDGENODE_BROWSER_ARTIFACTS=/tmp/shots", // a test's, not config
	}
	l, err := LoadLayers(path, append(env, "EDGENODE_PUBSUB__TENANTS=[{name: acme, secret: {file: "+secretFile(t)+"}}]"))
	if err != nil {
		t.Fatal(err)
	}
	c := l.Config
	if c.Node.ID != "node7" || c.Node.Region != "ap" || c.Node.Latitude != 1.5 {
		t.Errorf("node: %q %q %v; want node7 (the deeper variable wins), ap, 1.5", c.Node.ID, c.Node.Region, c.Node.Latitude)
	}
	if !slices.Equal(c.Mesh.Seeds, []string{"127.0.0.4:7946", "127.0.0.5:7946"}) {
		t.Errorf("seeds %q", c.Mesh.Seeds)
	}
	if c.HTTPS.Limits.MaxBodyBytes != 2<<20 || c.HTTPS.HTTP3 || c.Mongo.LogRetention != 0 {
		t.Errorf("max_body_bytes %d http3 %v log_retention %v", c.HTTPS.Limits.MaxBodyBytes, c.HTTPS.HTTP3, c.Mongo.LogRetention)
	}
	if v, _ := c.Admin.Token.Resolve(); v != "s3cret #not a comment" {
		t.Errorf("a scalar is taken as written: token %q", v)
	}
	if len(c.PubSub.Tenants) != 1 || c.PubSub.Tenants[0].Name != "acme" || c.PubSub.Tenants[0].Secret.File == "" {
		t.Errorf("tenants %+v", c.PubSub.Tenants)
	}
	if c.CDN.Origin.S3.Buckets["delta"] != "d-bucket" || c.CDN.Origin.S3.Buckets["alpha"] != "a-bucket" {
		t.Errorf("buckets %v", c.CDN.Origin.S3.Buckets)
	}
	if got := l.Source("node.id"); got != (Source{Env: "EDGENODE_NODE__ID"}) {
		t.Errorf("source of node.id: %v", got)
	}
	if got := l.Source("node.region"); got != (Source{Env: "EDGENODE_NODE"}) {
		t.Errorf("source of node.region: %v", got)
	}
}

// TestEnvProblems: a config variable that names no key, or holds a value
// its key does not take, is a problem naming the variable.
func TestEnvProblems(t *testing.T) {
	_, err := LoadLayers("", []string{
		"EDGENODE_NODE__IDD=x",
		"EDGENODE_NODE_ID=x",
		"EDGENODE_MESH__LINK__LISTEN=x",
		"EDGENODE_DNSS__LISTEN=x",
		"EDGENODE_ADMIN__TOKEN__FILE=/x",
		"EDGENODE_NODE__DRAIN_TIMEOUT=soon",
		"EDGENODE_MESH__SEEDS=[a",
		"EDGENODE_NODE__TAGS=edge",
		"EDGENODE_HTTPS=listen",
		"EDGENODE_MONGO__MAX_CONNS=-",
	})
	for _, want := range []string{
		`EDGENODE_NODE__IDD: names no config key: node.idd; did you mean EDGENODE_NODE__ID?`,
		`EDGENODE_NODE_ID: names no config key: node_id; keys are separated by a double underscore: did you mean EDGENODE_NODE__ID?`,
		`EDGENODE_MESH__LINK__LISTEN: names no config key: mesh.link; did you mean EDGENODE_MESH__LINK_LISTEN?`,
		`EDGENODE_DNSS__LISTEN: names no config key: dnss; did you mean EDGENODE_DNS?`,
		`EDGENODE_ADMIN__TOKEN__FILE: names no config key: admin.token has no keys below it; give its whole value in EDGENODE_ADMIN__TOKEN`,
		"node.drain_timeout (env EDGENODE_NODE__DRAIN_TIMEOUT): cannot use the string `soon` as a duration",
		"mesh.seeds (env EDGENODE_MESH__SEEDS): is not valid YAML",
		"node.tags (env EDGENODE_NODE__TAGS): must be a list, not the value \"edge\"",
		"https (env EDGENODE_HTTPS): must be a mapping of keys",
		"mongo.max_conns (env EDGENODE_MONGO__MAX_CONNS): cannot use the string `-` as an integer",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}

	// A value the merged config does not take names its variable.
	_, err = LoadLayers("", []string{"EDGENODE_NODE__ID=Bad_ID"})
	if err == nil || !strings.Contains(err.Error(), `node.id: "Bad_ID" is not a valid node id`) || !strings.Contains(err.Error(), "(set at env EDGENODE_NODE__ID)") {
		t.Errorf("bad node id from the environment: %v", err)
	}

	// A variable a secret refers to is not "naming no key", even in the
	// config namespace; one nothing refers to is.
	path := writeLayers(t, "admin: {token: {env: EDGENODE_ADMIN_TOKEN}}\n", nil)
	t.Setenv("EDGENODE_ADMIN_TOKEN", "t0ken") // Resolve reads the process's environment
	if _, err := LoadLayers(path, []string{"EDGENODE_ADMIN_TOKEN=t0ken"}); err != nil {
		t.Errorf("a secret's variable: %v", err)
	}
	if _, err := LoadLayers("", []string{"EDGENODE_ADMIN_TOKEN=t0ken"}); err == nil || !strings.Contains(err.Error(), "EDGENODE_ADMIN_TOKEN: names no config key") {
		t.Errorf("a variable nothing refers to: %v", err)
	}
}

// TestExplain: -print's output shows each value with its source, and a
// secret as its source only.
func TestExplain(t *testing.T) {
	fleet := secretFile(t)
	path := writeLayers(t, layersMain+"admin:\n  token: inline-main-secret\nhttps:\n  fleet_secret: {file: "+fleet+"}\n",
		map[string]string{"10-node.yaml": "node:\n  latitude: 50.1\npubsub:\n  tenants:\n    - name: acme\n      secret: drop-in-tenant-secret\n"})
	l, err := LoadLayers(path, []string{"EDGENODE_NODE__ID=node7", "EDGENODE_MONGO__UPSTREAM=mongodb://u:env-password@127.0.0.1:27017/"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Explain()
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	dropIn := filepath.Join(filepath.Dir(path), "conf.d", "10-node.yaml")
	for _, want := range []string{
		"  id: node7 # env EDGENODE_NODE__ID\n",
		"  region: eu # " + path + ":3\n",
		"  latitude: 50.1 # " + dropIn + ":2\n",
		"  longitude: 0 # default\n",
		"  tags: [edge, eu] # " + path + ":4\n",
		"  token: <redacted> # " + path + ":12\n",
		"  fleet_secret: {file: " + fleet + "} # " + path + ":14\n",
		"  upstream: <redacted> # env EDGENODE_MONGO__UPSTREAM\n",
		"      secret: <redacted> # " + dropIn + ":6\n",
		"      alpha: a-bucket # " + path + ":10\n",
		"# Layers, in order: defaults, " + path + ", " + dropIn + ", env EDGENODE_MONGO__UPSTREAM, env EDGENODE_NODE__ID\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	for _, secret := range []string{"inline-main-secret", "drop-in-tenant-secret", "env-password"} {
		if strings.Contains(out, secret) {
			t.Errorf("a secret's value is printed: %s", secret)
		}
	}
}

// secretFile writes a 32-character secret to a file and returns its path.
func secretFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(f, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// FuzzEnv feeds arbitrary variables to the loader: it must return a config
// or problems that each name where they are, never panic.
func FuzzEnv(f *testing.F) {
	for _, s := range [][2]string{
		{"NODE__ID", "a"}, {"NODE", "{id: a}"}, {"MESH__SEEDS", "[a, b"}, {"NODE_ID", "x"}, {"ADMIN__TOKEN", "{file: }"},
		{"CDN__ORIGIN__S3__BUCKETS__", "x"}, {"DNS__ZONES", "[{origin: a.}]"}, {"__", ""}, {"NODE__TAGS", "&a [*a]"},
		{"HTTPS__LIMITS", "{max_body_bytes: 1MiB}"}, {"MONGO__UPSTREAM", "{env: X}"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, name, value string) {
		_, err := LoadLayers("", []string{EnvPrefix + name + "=" + value})
		var ps *Problems
		if err != nil && (!errors.As(err, &ps) || len(ps.List) == 0) {
			t.Fatalf("not a problem list: %v", err)
		}
	})
}
