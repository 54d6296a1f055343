package config

import (
	"strings"
	"testing"
	"time"
)

// TestListElementDefaults: a key left out of a list entry takes its
// default in the loader, so the config holds the value in effect; a 0
// written there is rejected with the key named; unknown keys inside an
// entry are still reported.
func TestListElementDefaults(t *testing.T) {
	c, err := Parse([]byte(`
dns:
  zones:
    - origin: example.test.
      ns: [ns1.example.test.]
      records:
        - {name: www, type: A, value: 192.0.2.1}
  dynamic:
    - name: app.example.test.
`))
	if err != nil {
		t.Fatal(err)
	}
	z := c.DNS.Zones[0]
	if z.TTL != time.Hour || z.NegativeTTL != time.Minute || z.Records[0].TTL != 5*time.Minute {
		t.Errorf("zone: ttl %v, negative_ttl %v, record ttl %v; want 1h, 1m, 5m", z.TTL, z.NegativeTTL, z.Records[0].TTL)
	}
	if d := c.DNS.Dynamic[0]; d.Count != 2 || d.TTL != 30*time.Second {
		t.Errorf("dynamic: count %d, ttl %v; want 2, 30s", d.Count, d.TTL)
	}

	_, err = Parse([]byte(`
dns:
  zones:
    - origin: example.test.
      ns: [ns1.example.test.]
      ttl: 0s
      records:
        - {name: www, type: A, value: 192.0.2.1, ttl: 0s}
  dynamic:
    - {name: app.example.test., count: 0}
`))
	for _, want := range []string{
		"dns.zones[0].ttl: must be positive: want e.g. 1h",
		"dns.zones[0].records[0].ttl: must be positive: want e.g. 5m",
		"dns.dynamic[0].count: 0 is out of range: want 1 to 16",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}

	_, err = Parse([]byte("dns:\n  zones:\n    - origin: example.test.\n      tll: 1h\n"))
	if err == nil || !strings.Contains(err.Error(), `dns.zones[0].tll (line 4): unknown key; did you mean "ttl"?`) {
		t.Errorf("unknown key in a zone: %v", err)
	}
	_, err = Parse([]byte("dns:\n  dynamic:\n    - name: a.edgenode.test.\n      count: many\n"))
	if err == nil || !strings.Contains(err.Error(), "dns.dynamic[0].count (line 4)") {
		t.Errorf("bad value in a dynamic name: %v", err)
	}
}

// TestBareZeroDuration: a duration key takes a bare 0, like every other
// number; other numbers still need a unit.
func TestBareZeroDuration(t *testing.T) {
	c, err := Parse([]byte("mongo: {log_retention: 0}\ncdn: {negative_ttl: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Mongo.LogRetention != 0 || c.CDN.NegativeTTL != 0 {
		t.Errorf("log_retention %v, negative_ttl %v; want 0", c.Mongo.LogRetention, c.CDN.NegativeTTL)
	}
	_, err = Parse([]byte("node: {drain_timeout: 0}\ndns:\n  zones:\n    - {origin: a.test., ns: [ns.a.test.], ttl: 0}\n"))
	for _, want := range []string{"node.drain_timeout: 0s is out of range", "dns.zones[0].ttl: must be positive"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
	_, err = Parse([]byte("mongo: {log_retention: 5}\n"))
	if err == nil || !strings.Contains(err.Error(), "mongo.log_retention (line 1): cannot use the number `5` as a duration") {
		t.Errorf("a number without a unit: %v", err)
	}
}
