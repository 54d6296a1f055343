package dns

import (
	"net"
	"net/netip"
	"testing"

	"github.com/hashicorp/serf/coordinate"
	mdns "github.com/miekg/dns"

	"github.com/edgenode/edgenode/internal/dns/geoindex/geotest"
	"github.com/edgenode/edgenode/internal/nodemap"
)

func benchQuery(b *testing.B, name string, qtype uint16, e *mdns.EDNS0_SUBNET) []byte {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if e != nil {
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = append(m.IsEdns0().Option, e)
	}
	p, err := m.Pack()
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkHandle measures the serving path from raw query to raw answer,
// without sockets: parse, locate, rank (cached), pick, write. The dynamic
// cases should report 0 allocs/op.
func BenchmarkHandle(b *testing.B) {
	path := writeDB(b, clientNets)
	s, err := New(Options{
		Zones:     []Zone{testZone()},
		GeoIPPath: path,
		Dynamic:   []DynamicName{{Name: "widget"}},
	}, nodemap.NewPublisher(fiveNodes()), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	client := netip.MustParseAddr("127.0.1.1")
	for _, c := range []struct {
		name string
		pkt  []byte
	}{
		{"dynamic-A-ECS", benchQuery(b, "widget.edgenode.test.", mdns.TypeA, ecs("192.0.2.0/24"))},
		{"dynamic-AAAA-ECS", benchQuery(b, "widget.edgenode.test.", mdns.TypeAAAA, ecs("2001:db8:5::/48"))},
		{"dynamic-A-resolver", benchQuery(b, "widget.edgenode.test.", mdns.TypeA, nil)},
		{"static-A", benchQuery(b, "static.edgenode.test.", mdns.TypeA, nil)},
		{"nxdomain", benchQuery(b, "nope.edgenode.test.", mdns.TypeA, nil)},
	} {
		b.Run(c.name, func(b *testing.B) {
			out := make([]byte, 0, outBufSize)
			b.ReportAllocs()
			for b.Loop() {
				if s.handle(c.pkt, client, trUDP, out) == nil {
					b.Fatal("no answer")
				}
			}
		})
	}
}

// BenchmarkHandleCitySized is BenchmarkHandle's dynamic case against a
// 200k-network generated database with clients spread over it, so the
// ranking cache sees many locations.
func BenchmarkHandleCitySized(b *testing.B) {
	path := b.TempDir() + "/synthetic.mmdb"
	if _, err := geotest.WriteSynthetic(path, 200_000, 20_000, 3); err != nil {
		b.Fatal(err)
	}
	s, err := New(Options{
		Zones:     []Zone{testZone()},
		GeoIPPath: path,
		Dynamic:   []DynamicName{{Name: "widget"}},
	}, nodemap.NewPublisher(fiveNodes()), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	pkts := make([][]byte, 4096)
	for i := range pkts {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(1 + i%120), byte(i * 7), byte(i * 13), 0}), 24)
		pkts[i] = benchQuery(b, "widget.edgenode.test.", mdns.TypeA, ecs(p.String()))
	}
	out := make([]byte, 0, outBufSize)
	client := netip.MustParseAddr("127.0.0.1")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		s.handle(pkts[i&4095], client, trUDP, out)
		i++
	}
}

// BenchmarkUDPRoundTrip sends the dynamic query over loopback UDP from
// parallel clients: the whole path including the kernel, for orientation
// only (dnsperf is the real load test).
func BenchmarkUDPRoundTrip(b *testing.B) {
	ts := startServer(b, writeDB(b, clientNets), fiveNodes(), nil)
	pkt := benchQuery(b, "widget.edgenode.test.", mdns.TypeA, ecs("192.0.2.0/24"))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("udp", ts.udp)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		buf := make([]byte, 2048)
		for pb.Next() {
			if _, err := c.Write(pkt); err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Read(buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHandleCoordinates is BenchmarkHandle's dynamic case with every
// node carrying a network coordinate, so each answer's second address is
// the member closest in RTT to the first.
func BenchmarkHandleCoordinates(b *testing.B) {
	nodes := fiveNodes()
	for i := range nodes {
		c := coordinate.NewCoordinate(coordinate.DefaultConfig())
		c.Vec[0] = float64(i) * 0.01
		nodes[i].Coord = c
	}
	s, err := New(Options{
		Zones:     []Zone{testZone()},
		GeoIPPath: writeDB(b, clientNets),
		Dynamic:   []DynamicName{{Name: "widget"}},
	}, nodemap.NewPublisher(nodes), nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	client := netip.MustParseAddr("127.0.1.1")
	pkt := benchQuery(b, "widget.edgenode.test.", mdns.TypeA, ecs("192.0.2.0/24"))
	out := make([]byte, 0, outBufSize)
	b.ReportAllocs()
	for b.Loop() {
		if s.handle(pkt, client, trUDP, out) == nil {
			b.Fatal("no answer")
		}
	}
}
