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
