package dns

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/edgenode/edgenode/internal/nodemap"
)

// FuzzHandle feeds raw packets to the packet handler, as the UDP and TCP
// loops do. Whatever comes in, the server either sends nothing or a
// well-formed reply to that ID that fits the transport; it never panics.
func FuzzHandle(f *testing.F) {
	s, err := New(Options{
		Zones:     []Zone{testZone()},
		GeoIPPath: writeDB(f, clientNets),
		Dynamic:   []DynamicName{{Name: "widget"}, {Name: "edge", Tag: "edge", K: 5}},
	}, nodemap.NewPublisher(fiveNodes()), nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	seed := func(name string, qtype uint16, edns bool, opts ...mdns.EDNS0) {
		m := new(mdns.Msg)
		m.SetQuestion(name, qtype)
		if edns {
			m.SetEdns0(1232, true)
			m.IsEdns0().Option = opts
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed("widget.edgenode.test.", mdns.TypeA, false)
	seed("widget.edgenode.test.", mdns.TypeAAAA, true, ecs("2001:db8:5::/48"))
	seed("widget.edgenode.test.", mdns.TypeA, true, ecs("192.0.2.0/24"), &mdns.EDNS0_COOKIE{Code: 10, Cookie: "0102030405060708"})
	seed("www.edgenode.test.", mdns.TypeA, true, ecs("198.51.100.0/24"))
	seed("edge.edgenode.test.", mdns.TypeA, true)
	seed("static.edgenode.test.", mdns.TypeANY, false)
	seed("big.edgenode.test.", mdns.TypeTXT, false)
	seed("loop1.edgenode.test.", mdns.TypeA, false)
	seed("fra.nodes.edgenode.test.", mdns.TypeAAAA, false)
	seed("nope.edgenode.test.", mdns.TypeMX, true)
	seed("example.com.", mdns.TypeA, false)
	q := packQueryF(f, "static.edgenode.test.", mdns.TypeA)
	f.Add(q[:5])
	f.Add(q[:20])
	f.Add(append(append([]byte{}, q...), 0xC0, 0x0C))
	f.Add(append(q[:12:12], 0xC0, 12, 0, 1, 0, 1))
	f.Add(append(append([]byte{}, q[:10]...), 0, 1, 0, 0, 41, 16, 0, 0, 0, 0, 0, 0, 8, 0, 8, 0, 4, 0, 1, 33, 0))
	f.Add(bytes.Repeat([]byte{0xff}, 600))

	out := make([]byte, 0, outBufSize)
	client := netip.MustParseAddr("192.0.2.1")
	f.Fuzz(func(t *testing.T, pkt []byte) {
		for _, tr := range []int{trUDP, trTCP} {
			resp := s.handle(pkt, client, tr, out)
			if resp == nil {
				continue
			}
			if len(resp) < headerLen || binary.BigEndian.Uint16(resp) != binary.BigEndian.Uint16(pkt) {
				t.Fatalf("reply header % x to % x", resp[:min(len(resp), 12)], pkt[:min(len(pkt), 12)])
			}
			m := new(mdns.Msg)
			if err := m.Unpack(resp); err != nil {
				t.Fatalf("reply does not parse: %v\nquery % x\nreply % x", err, pkt, resp)
			}
			if !m.Response || m.RecursionAvailable {
				t.Fatalf("flags: %v", m.MsgHdr)
			}
			limit := maxTCPMessage
			if tr == trUDP {
				limit = 512
				if opt := m.IsEdns0(); opt != nil {
					limit = s.opts.MaxUDPSize
				}
			}
			if len(resp) > limit {
				t.Fatalf("%d-byte reply over a %d limit", len(resp), limit)
			}
		}
	})
}

func packQueryF(f *testing.F, name string, qtype uint16) []byte {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	b, err := m.Pack()
	if err != nil {
		f.Fatal(err)
	}
	return b
}
