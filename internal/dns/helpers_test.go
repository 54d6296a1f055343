package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/dns/geoindex/geotest"
	"github.com/edgenode/edgenode/internal/nodemap"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }

// Client networks in the test database (documentation ranges, plus
// loopback networks so a test client can be a "resolver" somewhere).
var clientNets = []geotest.Network{
	{Prefix: pfx("192.0.2.0/26"), Place: geotest.Paris},
	{Prefix: pfx("192.0.2.64/26"), Place: geotest.Seattle},
	{Prefix: pfx("192.0.2.128/26"), Place: geotest.NewYork},
	{Prefix: pfx("192.0.2.192/26"), Place: geotest.BuenosAires},
	{Prefix: pfx("198.51.100.0/25"), Place: geotest.Tokyo},
	{Prefix: pfx("198.51.100.128/25"), Place: geotest.Sydney},
	{Prefix: pfx("203.0.113.0/24"), Place: geotest.Tokyo, CountryOnly: true},
	{Prefix: pfx("2001:db8:1::/48"), Place: geotest.Paris},
	{Prefix: pfx("2001:db8:2::/48"), Place: geotest.Seattle},
	{Prefix: pfx("2001:db8:3::/48"), Place: geotest.NewYork},
	{Prefix: pfx("2001:db8:4::/48"), Place: geotest.BuenosAires},
	{Prefix: pfx("2001:db8:5::/48"), Place: geotest.Tokyo},
	{Prefix: pfx("2001:db8:6::/48"), Place: geotest.Sydney},
	{Prefix: pfx("127.0.1.0/24"), Place: geotest.Seattle},
	{Prefix: pfx("127.0.2.0/24"), Place: geotest.Sydney},
}

func writeDB(t testing.TB, nets []geotest.Network) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "city.mmdb")
	if err := geotest.Write(path, nets); err != nil {
		t.Fatal(err)
	}
	return path
}

// The five node sites.
func fiveNodes() []nodemap.Node {
	mk := func(id, region string, p geotest.Place, n byte) nodemap.Node {
		return nodemap.Node{
			ID: id, Region: region, Lat: p.Lat, Lon: p.Lon, State: nodemap.Alive, Verified: true, Ready: true,
			IPv4: netip.AddrFrom4([4]byte{100, 64, 0, n}),
			IPv6: netip.AddrFrom16([16]byte{0xfd, 0, 15: n}),
			Tags: []string{"edge"},
		}
	}
	return []nodemap.Node{
		mk("fra", "eu-central", geotest.Frankfurt, 1),
		mk("pdx", "us-west", geotest.Oregon, 2),
		mk("iad", "us-east", geotest.Virginia, 3),
		mk("gru", "sa-east", geotest.SaoPaulo, 4),
		mk("sin", "ap-southeast", geotest.Singapore, 5),
	}
}

var nodeByV4 = map[string]string{
	"100.64.0.1": "fra", "100.64.0.2": "pdx", "100.64.0.3": "iad", "100.64.0.4": "gru", "100.64.0.5": "sin",
}

var nodeByV6 = map[string]string{
	"fd00::1": "fra", "fd00::2": "pdx", "fd00::3": "iad", "fd00::4": "gru", "fd00::5": "sin",
}

func testZone() Zone {
	big := make([]Record, 12)
	for i := range big {
		big[i] = Record{Name: "big", Type: "TXT", Value: `"` + strings.Repeat(string(rune('a'+i)), 200) + `"`}
	}
	return Zone{
		Origin: "edgenode.test.",
		SOA:    SOA{Serial: 2024010101, Minimum: 45 * time.Second},
		NS:     []string{"ns1", "ns2.edgenode.test."},
		Records: append([]Record{
			{Name: "@", Type: "A", Value: "192.0.2.10"},
			{Name: "www", Type: "CNAME", Value: "widget"},
			{Name: "alias", Type: "CNAME", Value: "static"},
			{Name: "static", Type: "A", Value: "192.0.2.11"},
			{Name: "static", Type: "A", Value: "192.0.2.12"},
			{Name: "static", Type: "AAAA", Value: "2001:db8::11"},
			{Name: "static", Type: "TXT", TTL: time.Minute, Value: `"hello world" "second"`},
			{Name: "@", Type: "MX", Value: "10 mail"},
			{Name: "@", Type: "CAA", Value: `0 issue "letsencrypt.org"`},
			{Name: "a.b.deep", Type: "A", Value: "192.0.2.13"},
			{Name: "outside", Type: "CNAME", Value: "example.com."},
			{Name: "dangling", Type: "CNAME", Value: "nothere"},
			{Name: "loop1", Type: "CNAME", Value: "loop2"},
			{Name: "loop2", Type: "CNAME", Value: "loop1"},
		}, big...),
	}
}

type testServer struct {
	*Server
	pub  *nodemap.Publisher
	reg  *prometheus.Registry
	udp  string
	tcp  string
	opts Options
}

// startServer starts a server with the test zone and the given database
// path (may be empty) on 127.0.0.1:0.
func startServer(t testing.TB, dbPath string, nodes []nodemap.Node, mod func(*Options)) *testServer {
	t.Helper()
	return startServerLog(t, dbPath, nodes, mod, nil)
}

// startServerLog is startServer with a logger.
func startServerLog(t testing.TB, dbPath string, nodes []nodemap.Node, mod func(*Options), log *slog.Logger) *testServer {
	t.Helper()
	opts := Options{
		Listen:    "127.0.0.1:0",
		Zones:     []Zone{testZone()},
		GeoIPPath: dbPath,
		Dynamic: []DynamicName{
			{Name: "widget"},
			{Name: "one.edgenode.test.", K: 1, TTL: 10 * time.Second},
			{Name: "edge", Tag: "edge", K: 5},
		},
	}
	if mod != nil {
		mod(&opts)
	}
	pub := nodemap.NewPublisher(nodes)
	reg := prometheus.NewRegistry()
	s, err := New(opts, pub, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	u, tc := s.Addr()
	return &testServer{Server: s, pub: pub, reg: reg, udp: u.String(), tcp: tc.String(), opts: opts}
}

// qopt describes a query.
type qopt struct {
	tcp     bool
	from    string // local address to send from (a 127/8 address)
	ecs     *mdns.EDNS0_SUBNET
	edns    bool
	bufsize uint16
}

func (ts *testServer) query(t testing.TB, name string, qtype uint16, o qopt) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if o.edns || o.ecs != nil {
		size := o.bufsize
		if size == 0 {
			size = 1232
		}
		m.SetEdns0(size, false)
		if o.ecs != nil {
			opt := m.IsEdns0()
			opt.Option = append(opt.Option, o.ecs)
		}
	}
	r, err := ts.exchange(m, o)
	if err != nil {
		t.Fatalf("%s %s: %v", name, mdns.TypeToString[qtype], err)
	}
	return r
}

func (ts *testServer) exchange(m *mdns.Msg, o qopt) (*mdns.Msg, error) {
	c := &mdns.Client{Net: "udp", Timeout: 3 * time.Second, UDPSize: 65535}
	addr := ts.udp
	if o.tcp {
		c.Net = "tcp"
		addr = ts.tcp
	}
	if o.from != "" {
		if o.tcp {
			c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(o.from)}, Timeout: 3 * time.Second}
		} else {
			c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(o.from)}, Timeout: 3 * time.Second}
		}
	}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

func ecs(prefix string) *mdns.EDNS0_SUBNET {
	p := pfx(prefix)
	e := &mdns.EDNS0_SUBNET{Code: mdns.EDNS0SUBNET, SourceNetmask: uint8(p.Bits()), Address: p.Addr().AsSlice()}
	e.Family = 1
	if p.Addr().Is6() {
		e.Family = 2
	}
	return e
}

// answerNodes maps the A/AAAA answers to node ids, in order.
func answerNodes(t testing.TB, r *mdns.Msg) []string {
	t.Helper()
	var ids []string
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *mdns.A:
			ids = append(ids, nodeByV4[rr.A.String()])
		case *mdns.AAAA:
			ids = append(ids, nodeByV6[rr.AAAA.String()])
		}
	}
	return ids
}

func replyECS(r *mdns.Msg) *mdns.EDNS0_SUBNET {
	opt := r.IsEdns0()
	if opt == nil {
		return nil
	}
	for _, o := range opt.Option {
		if e, ok := o.(*mdns.EDNS0_SUBNET); ok {
			return e
		}
	}
	return nil
}

func nodemapOf(nodes []nodemap.Node) *nodemap.Publisher { return nodemap.NewPublisher(nodes) }

// metricValue is series name{labels} as the registry exports it (labels:
// name, value, ...): a counter's or gauge's value, a histogram's sample
// count; 0 when there is no such series.
func metricValue(t testing.TB, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}
