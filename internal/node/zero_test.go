package node

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/dns"
	"github.com/edgenode/edgenode/internal/pubsub"
)

// zeroMeansNone lists the keys whose explicit 0 means none (no limit,
// never, not kept, off), each with a check that the part is handed that
// meaning in its package's terms (there, 0 is the default and a negative
// value is none, unless noted).
var zeroMeansNone = map[string]func(c *config.Config) bool{
	// transport.CertStore.Watch: an interval <= 0 does not watch.
	"https.cert_check_interval": func(c *config.Config) bool { return c.HTTPS.CertCheckInterval == 0 },
	// transport.Limits: 0 is no limit for these two.
	"https.limits.max_body_bytes":   func(c *config.Config) bool { return httpsLimits(&c.HTTPS.Limits).MaxBodyBytes == 0 },
	"https.limits.max_conns_per_ip": func(c *config.Config) bool { return httpsLimits(&c.HTTPS.Limits).MaxConnsPerIP == 0 },
	"dns.slack_km":                  func(c *config.Config) bool { return mustDNS(c).SlackKM < 0 },
	"dns.rate_limit.slip":           func(c *config.Config) bool { return mustDNS(c).RRL.Slip < 0 },
	"dns.tcp_max_conns_per_ip":      func(c *config.Config) bool { return mustDNS(c).MaxTCPConnsPerIP < 0 },
	"mongo.max_lag":                 func(c *config.Config) bool { return replOptions(c).MaxLag < 0 },
	"mongo.log_retention":           func(c *config.Config) bool { return replOptions(c).LogRetention < 0 },
	"mongo.client_idle_timeout":     func(c *config.Config) bool { return clientIdleTimeout(&c.Mongo) < 0 },
	"mongo.retry_records_bytes":     func(c *config.Config) bool { return retryRecordsBytes(&c.Mongo) < 0 },
	"mongo.doc_cache_bytes":         func(c *config.Config) bool { return docCacheBytes(&c.Mongo) < 0 },
	// archive.Options.Retention: 0 is none (never deleted) there too.
	"mongo.archive.retention":    func(c *config.Config) bool { return archiveOptions(c).Retention == 0 },
	"cdn.stale_while_revalidate": func(c *config.Config) bool { return cdnOptions(&c.CDN, "", nil).StaleWhileRevalidate < 0 },
	"cdn.negative_ttl":           func(c *config.Config) bool { return cdnOptions(&c.CDN, "", nil).NegativeTTL < 0 },
	"cdn.memory_bytes":           func(c *config.Config) bool { return cdnOptions(&c.CDN, "", nil).MemoryBytes < 0 },
	"pubsub.history":             func(c *config.Config) bool { return mustPubSub(c).History < 0 },
	"pubsub.max_conns_per_ip":    func(c *config.Config) bool { return mustPubSub(c).MaxConnsPerIP < 0 },
	"pubsub.subscribe_rate":      func(c *config.Config) bool { return mustPubSub(c).SubscribeRate < 0 },
}

// zeroIsAValue lists the keys whose 0 is a value like any other: ports (0
// is the listen port) and coordinates (0 is a place).
var zeroIsAValue = map[string]func(c *config.Config) bool{
	// transport.Options.AltSvcPort: 0 is the UDP socket's own port.
	"https.alt_svc_port":         func(c *config.Config) bool { return c.HTTPS.AltSvcPort == 0 },
	"https.acme.challenge_port":  func(c *config.Config) bool { return acmeOptions(c).ChallengePort == 8443 },
	"node.latitude":              nil,
	"node.longitude":             nil,
	"dns.overrides[0].latitude":  nil,
	"dns.overrides[0].longitude": nil,
	"dns.nodes[0].latitude":      nil,
	"dns.nodes[0].longitude":     nil,
}

// TestZeroRule: for every number, size and duration key of the config,
// "key: 0" written in a file either means none (and the part gets none),
// is a port or a coordinate, or is rejected with the key named and what to
// write instead. A key added without a decision fails here.
func TestZeroRule(t *testing.T) {
	base := everythingOn(t)
	keys := numericKeys(reflect.TypeOf(config.Config{}), "")
	if len(keys) < 50 {
		t.Fatalf("found only %d keys: %v", len(keys), keys)
	}
	seen := map[string]bool{}
	for _, key := range keys {
		seen[key] = true
		t.Run(key, func(t *testing.T) {
			c, err := config.Parse([]byte(base))
			if err != nil {
				t.Fatalf("base config: %v", err)
			}
			got, err := config.Parse(zeroYAML(t, &c, key))
			none, isNone := zeroMeansNone[key]
			value, isValue := zeroIsAValue[key]
			switch {
			case err != nil && (isNone || isValue):
				t.Errorf("0 should be accepted, got %v", err)
			case err != nil:
				msg := err.Error()
				if !strings.Contains(msg, "\n  "+key+": ") || !strings.Contains(msg, "want") {
					t.Errorf("0 rejected without naming %s or saying what to write: %v", key, err)
				}
			case isNone:
				if !none(&got) {
					t.Errorf("0 accepted, but the part is not handed none")
				}
			case isValue:
				if value != nil && !value(&got) {
					t.Errorf("0 accepted, but the part is not handed its meaning")
				}
			default:
				t.Errorf("0 accepted with no meaning declared: add the key to zeroMeansNone (and translate it with none) or reject 0 in config")
			}
		})
	}
	for _, m := range []map[string]func(*config.Config) bool{zeroMeansNone, zeroIsAValue} {
		for key := range m {
			if !seen[key] {
				t.Errorf("%s: no such key", key)
			}
		}
	}
}

// TestPubSubZeroConnsPerIP: pubsub.max_conns_per_ip: 0 lets one address
// open more connections than the old default of 256 (a load test got 256
// and then 429s).
func TestPubSubZeroConnsPerIP(t *testing.T) {
	c, err := config.Parse([]byte("pubsub: {max_conns_per_ip: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	opts, err := pubsubOptions(&c.PubSub)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := pubsub.New(opts, nil, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	mux := http.NewServeMux()
	for pattern, h := range ps.Routes() {
		mux.Handle(pattern, h)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	const n = pubsub.DefaultMaxConnsPerIP + 10
	for i := range n {
		conn, err := net.DialTimeout("tcp", srv.Listener.Addr().String(), 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(conn, "GET /sse?channel=demo/t%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
		status, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
		if !strings.HasPrefix(status, "HTTP/1.1 200") {
			t.Fatalf("connection %d of %d from one address: %q", i+1, n, strings.TrimSpace(status))
		}
	}
}

func mustDNS(c *config.Config) dns.Options {
	o, err := dnsOptions(&c.DNS)
	if err != nil {
		panic(err)
	}
	return o
}

func mustPubSub(c *config.Config) pubsub.Options {
	o, err := pubsubOptions(&c.PubSub)
	if err != nil {
		panic(err)
	}
	return o
}

// everythingOn is a config with every section and list the numeric keys
// live in turned on, so that each key is validated.
func everythingOn(t *testing.T) string {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return fmt.Sprintf(`
node: {id: zero, data_dir: %s}
https:
  fleet_secret: {file: %s}
  acme: {enabled: true, names: [example.com], on_demand: {ask: "http://127.0.0.1:1/ask"}}
dns:
  rate_limit: {enabled: true}
  overrides: [{cidr: 192.0.2.0/24, latitude: 1, longitude: 2}]
  nodes: [{id: other, ipv4: 192.0.2.1, latitude: 1, longitude: 2}]
mesh: {enabled: true, ca_cert: %s, cert: %s, key_file: %s}
`, dir, file("fleet.secret", strings.Repeat("s", 40)), file("ca.pem", "x"), file("cert.pem", "x"), file("key.pem", "x"))
}

// numericKeys lists the key paths of every number, size and duration in t,
// with [0] for the first entry of a list.
func numericKeys(t reflect.Type, path string) []string {
	switch {
	case t == reflect.TypeOf(time.Duration(0)) || t == reflect.TypeOf(config.ByteSize(0)):
		return []string{path}
	case t == reflect.TypeOf(config.Secret{}):
		return nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		return numericKeys(t.Elem(), path)
	case reflect.Slice:
		return numericKeys(t.Elem(), path+"[0]")
	case reflect.Struct:
		var out []string
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			p := name
			if path != "" {
				p = path + "." + name
			}
			out = append(out, numericKeys(f.Type, p)...)
		}
		return out
	case reflect.Int, reflect.Int64, reflect.Float64, reflect.Uint32:
		return []string{path}
	}
	return nil
}

// zeroYAML is c as a YAML file in which the key at path is written as a
// bare 0.
func zeroYAML(t *testing.T, c *config.Config, path string) []byte {
	t.Helper()
	var root yaml.Node
	if err := root.Encode(c); err != nil {
		t.Fatal(err)
	}
	n := &root
	for part := range strings.SplitSeq(path, ".") {
		name, indexed := strings.CutSuffix(part, "[0]")
		var next *yaml.Node
		for i := 0; n.Kind == yaml.MappingNode && i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == name {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			t.Fatalf("%s: the base config has no %s", path, name)
		}
		if indexed {
			if next.Kind != yaml.SequenceNode || len(next.Content) == 0 {
				t.Fatalf("%s: the base config has no %s entry", path, name)
			}
			next = next.Content[0]
		}
		n = next
	}
	*n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: "0"}
	out, err := yaml.Marshal(&root)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
