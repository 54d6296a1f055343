package dns

import (
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
)

func TestNearestNodeByECS(t *testing.T) {
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	cases := []struct {
		client string
		want   []string // first two, nearest first
		scope  uint8
	}{
		{"192.0.2.0/24", []string{"fra", "iad"}, 26}, // Paris
		{"192.0.2.64/26", []string{"pdx", "iad"}, 26},
		{"192.0.2.128/26", []string{"iad", "pdx"}, 26},
		{"192.0.2.192/26", []string{"gru", "iad"}, 26},
		{"198.51.100.0/24", []string{"sin", "pdx"}, 25},
		{"198.51.100.128/25", []string{"sin", "pdx"}, 25},
		{"203.0.113.0/24", []string{"sin", "pdx"}, 24}, // country-only record
		{"2001:db8:1::/48", []string{"fra", "iad"}, 48},
		{"2001:db8:2::/56", []string{"pdx", "iad"}, 48},
		{"2001:db8:3::/48", []string{"iad", "pdx"}, 48},
		{"2001:db8:4::/48", []string{"gru", "iad"}, 48},
		{"2001:db8:5::/48", []string{"sin", "pdx"}, 48},
		{"2001:db8:6::/48", []string{"sin", "pdx"}, 48},
	}
	for _, c := range cases {
		for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA} {
			for _, tcp := range []bool{false, true} {
				r := ts.query(t, "widget.edgenode.test.", qt, qopt{ecs: ecs(c.client), tcp: tcp})
				got := answerNodes(t, r)
				if r.Rcode != mdns.RcodeSuccess || !slices.Equal(got, c.want) {
					t.Errorf("%s %s tcp=%v: rcode %d answers %v, want %v", c.client, mdns.TypeToString[qt], tcp,
						r.Rcode, got, c.want)
				}
				if !r.Authoritative || r.RecursionAvailable {
					t.Errorf("%s: aa=%v ra=%v", c.client, r.Authoritative, r.RecursionAvailable)
				}
				e := replyECS(r)
				want := ecs(c.client)
				if e == nil || e.SourceScope != c.scope || e.SourceNetmask != want.SourceNetmask ||
					!e.Address.Equal(want.Address) || e.Family != want.Family {
					t.Errorf("%s: reply ECS %v, want scope %d", c.client, e, c.scope)
				}
				for _, rr := range r.Answer {
					if rr.Header().Ttl != 30 {
						t.Errorf("ttl %d, want 30", rr.Header().Ttl)
					}
				}
			}
		}
	}
	// K=1 and K=5 (all of the pool, nearest first).
	r := ts.query(t, "one.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.64/26")})
	if got := answerNodes(t, r); !slices.Equal(got, []string{"pdx"}) || r.Answer[0].Header().Ttl != 10 {
		t.Errorf("one: %v", r.Answer)
	}
	r = ts.query(t, "edge.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.192/26")})
	if got := answerNodes(t, r); !slices.Equal(got, []string{"gru", "iad", "pdx", "fra", "sin"}) {
		t.Errorf("edge from Buenos Aires: %v", got)
	}
}

func TestResolverAddressAndECSOverride(t *testing.T) {
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	// The resolver's own address places the client when there is no ECS.
	for _, c := range []struct{ from, want string }{{"127.0.1.1", "pdx"}, {"127.0.2.9", "sin"}} {
		for _, tcp := range []bool{false, true} {
			r := ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{from: c.from, tcp: tcp})
			if got := answerNodes(t, r); len(got) != 2 || got[0] != c.want {
				t.Errorf("from %s tcp=%v: %v, want %s first", c.from, tcp, got, c.want)
			}
			if r.IsEdns0() != nil {
				t.Errorf("OPT in a reply to a query without EDNS")
			}
		}
	}
	// ECS wins over the resolver's address.
	r := ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{from: "127.0.1.1", ecs: ecs("192.0.2.192/26")})
	if got := answerNodes(t, r); got[0] != "gru" {
		t.Errorf("ECS Buenos Aires from a Seattle resolver: %v", got)
	}
	// Source prefix 0: don't use the resolver's address; scope 0.
	r = ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{from: "127.0.1.1", ecs: &mdns.EDNS0_SUBNET{
		Code: mdns.EDNS0SUBNET, Family: 1, SourceNetmask: 0, Address: []byte{0, 0, 0, 0}}})
	if e := replyECS(r); e == nil || e.SourceScope != 0 || len(r.Answer) != 2 {
		t.Errorf("ECS /0: %v %v", r.Answer, e)
	}
	// Static answers say scope 0: they do not depend on the client.
	r = ts.query(t, "static.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/24")})
	if e := replyECS(r); e == nil || e.SourceScope != 0 {
		t.Errorf("static answer ECS %v", e)
	}
}

func TestNodeChangesShowInNextAnswer(t *testing.T) {
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	paris := qopt{ecs: ecs("192.0.2.0/26")}
	first := func() []string {
		return answerNodes(t, ts.query(t, "widget.edgenode.test.", mdns.TypeA, paris))
	}
	if got := first(); got[0] != "fra" {
		t.Fatalf("before: %v", got)
	}
	nodes := fiveNodes()
	nodes[0].State = nodemap.Draining
	ts.pub.Publish(nodes)
	if got := first(); !slices.Equal(got, []string{"iad", "pdx"}) {
		t.Errorf("fra draining: %v", got)
	}
	nodes[2].State = nodemap.Dead // iad
	ts.pub.Publish(nodes)
	if got := first(); !slices.Equal(got, []string{"pdx", "gru"}) {
		t.Errorf("fra draining, iad dead: %v", got)
	}
	nodes[0].State = nodemap.Alive
	nodes[2].State = nodemap.Suspect
	ts.pub.Publish(nodes)
	if got := first(); !slices.Equal(got, []string{"fra", "pdx"}) {
		t.Errorf("fra back, iad suspect: %v", got)
	}
	// A node leaving the map takes its per-node name with it.
	if r := ts.query(t, "iad.nodes.edgenode.test.", mdns.TypeA, qopt{}); len(r.Answer) != 1 {
		t.Errorf("iad (suspect) per-node name: %v", r)
	}
	ts.pub.Publish(nodes[:2])
	if r := ts.query(t, "iad.nodes.edgenode.test.", mdns.TypeA, qopt{}); r.Rcode != mdns.RcodeNameError {
		t.Errorf("iad gone: rcode %d", r.Rcode)
	}
	// Nothing serving: NODATA with the SOA, not a dead node.
	for i := range nodes {
		nodes[i].State = nodemap.Draining
	}
	ts.pub.Publish(nodes)
	r := ts.query(t, "widget.edgenode.test.", mdns.TypeA, paris)
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Errorf("all draining: %v", r)
	}
}

// TestUnverifiedNodesLeftOut: a node whose addresses the map does not
// vouch for gets neither dynamic answers nor a per-node name; it is
// counted and logged, and comes back once verified.
func TestUnverifiedNodesLeftOut(t *testing.T) {
	log, logs := testkit.Logger(t)
	ts := startServerLog(t, writeDB(t, clientNets), fiveNodes(), func(o *Options) {
		o.Dynamic = append(o.Dynamic, DynamicName{Name: "all", K: 16})
	}, log)
	nodes := fiveNodes()
	nodes[0].Verified, nodes[0].Unverified = false, "no mutual-TLS peer link up"                                            // fra
	nodes[3].Verified, nodes[3].Unverified = false, "public address 100.64.0.4 is not among its certificate's IP addresses" // gru
	ts.pub.Publish(nodes)
	for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA} {
		r := ts.query(t, "all.edgenode.test.", qt, qopt{ecs: ecs("192.0.2.0/26")})
		if got := answerNodes(t, r); !slices.Equal(got, []string{"iad", "pdx", "sin"}) {
			t.Errorf("%s: answered %v, want the three verified nodes", mdns.TypeToString[qt], got)
		}
	}
	for _, id := range []string{"fra", "gru"} {
		if r := ts.query(t, id+".nodes.edgenode.test.", mdns.TypeA, qopt{}); r.Rcode != mdns.RcodeNameError {
			t.Errorf("%s's per-node name: rcode %d, answers %v", id, r.Rcode, r.Answer)
		}
	}
	if got := testutil.ToFloat64(ts.m.unverified); got != 2 {
		t.Errorf("edgenode_dns_unverified_nodes = %v, want 2", got)
	}
	out := logs.String()
	for _, want := range []string{"node=fra", "node=gru", "not among its certificate"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	// The same map again (a load change) logs nothing new.
	before := logs.Count("left out")
	nodes[1].Load = 3
	ts.pub.Publish(nodes)
	ts.query(t, "all.edgenode.test.", mdns.TypeA, qopt{})
	if n := logs.Count("left out"); n != before {
		t.Errorf("logged again on an unrelated map change: %d lines, was %d", n, before)
	}
	ts.pub.Publish(fiveNodes())
	r := ts.query(t, "all.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/26")})
	if got := answerNodes(t, r); len(got) != 5 {
		t.Errorf("all verified: %v", got)
	}
	if got := testutil.ToFloat64(ts.m.unverified); got != 0 {
		t.Errorf("edgenode_dns_unverified_nodes = %v after verification", got)
	}
	if !logs.Contains("in answers again") {
		t.Errorf("return not logged:\n%s", logs.String())
	}
}

func TestPowerOfTwoChoicesAmongEquallyNear(t *testing.T) {
	nodes := fiveNodes()
	// Three more nodes in Frankfurt's metro, within the slack.
	for i, id := range []string{"fra2", "fra3", "fra4"} {
		n := nodes[0]
		n.ID = id
		n.Lat += 0.1 * float64(i+1)
		n.IPv4 = n.IPv4.Next().Next().Next().Next().Next().Next().Next().Next().Next().Next()
		for range i {
			n.IPv4 = n.IPv4.Next()
		}
		nodes = append(nodes, n)
	}
	ts := startServer(t, writeDB(t, clientNets), nodes, nil)
	seen := map[string]int{}
	for range 200 {
		r := ts.query(t, "one.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/26")})
		seen[r.Answer[0].(*mdns.A).A.String()]++
	}
	if len(seen) != 4 {
		t.Errorf("first answers over 200 queries: %v; want all four Frankfurt nodes", seen)
	}
	// With loads, the busiest of the four never wins a choice of two: it
	// loses to whichever other node it is paired with.
	for i := range nodes {
		nodes[i].Load = float64(i)
	}
	ts.pub.Publish(nodes)
	busiest := "100.64.0.13" // fra4, load 7
	seen = map[string]int{}
	for range 200 {
		r := ts.query(t, "one.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/26")})
		a := r.Answer[0].(*mdns.A).A.String()
		if a == busiest {
			t.Fatalf("the busiest node won a power-of-two choice")
		}
		seen[a]++
	}
	if len(seen) != 3 || seen["100.64.0.1"] <= seen["100.64.0.12"] {
		t.Errorf("with loads: %v; want the three others, the idlest most often", seen)
	}
}

func TestStaticZone(t *testing.T) {
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	type check func(t *testing.T, r *mdns.Msg)
	rrs := func(want ...string) check {
		return func(t *testing.T, r *mdns.Msg) {
			t.Helper()
			var got []string
			for _, rr := range r.Answer {
				got = append(got, strings.ReplaceAll(rr.String(), "\t", " "))
			}
			if !slices.Equal(got, want) {
				t.Errorf("answer\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
	}
	negative := func(rcode int) check {
		return func(t *testing.T, r *mdns.Msg) {
			t.Helper()
			if r.Rcode != rcode || len(r.Answer) != 0 || len(r.Ns) != 1 {
				t.Fatalf("rcode %s, %d answers, authority %v", mdns.RcodeToString[r.Rcode], len(r.Answer), r.Ns)
			}
			soa, ok := r.Ns[0].(*mdns.SOA)
			if !ok || soa.Hdr.Name != "edgenode.test." || soa.Hdr.Ttl != 45 || soa.Minttl != 45 || soa.Serial != 2024010101 {
				t.Errorf("authority %v", r.Ns[0])
			}
		}
	}
	cases := []struct {
		name  string
		qtype uint16
		check check
	}{
		{"edgenode.test.", mdns.TypeA, rrs("edgenode.test. 300 IN A 192.0.2.10")},
		{"EdgeNode.TEST.", mdns.TypeA, rrs("EdgeNode.TEST. 300 IN A 192.0.2.10")},
		{"edgenode.test.", mdns.TypeNS, rrs("edgenode.test. 3600 IN NS ns1.edgenode.test.", "edgenode.test. 3600 IN NS ns2.edgenode.test.")},
		{"edgenode.test.", mdns.TypeSOA, rrs("edgenode.test. 3600 IN SOA ns1.edgenode.test. hostmaster.edgenode.test. 2024010101 3600 600 604800 45")},
		{"edgenode.test.", mdns.TypeMX, rrs("edgenode.test. 300 IN MX 10 mail.edgenode.test.")},
		{"edgenode.test.", mdns.TypeCAA, rrs(`edgenode.test. 300 IN CAA 0 issue "letsencrypt.org"`)},
		{"static.edgenode.test.", mdns.TypeA, rrs("static.edgenode.test. 300 IN A 192.0.2.11", "static.edgenode.test. 300 IN A 192.0.2.12")},
		{"static.edgenode.test.", mdns.TypeAAAA, rrs("static.edgenode.test. 300 IN AAAA 2001:db8::11")},
		{"static.edgenode.test.", mdns.TypeTXT, rrs(`static.edgenode.test. 60 IN TXT "hello world" "second"`)},
		{"alias.edgenode.test.", mdns.TypeA, rrs("alias.edgenode.test. 300 IN CNAME static.edgenode.test.",
			"static.edgenode.test. 300 IN A 192.0.2.11", "static.edgenode.test. 300 IN A 192.0.2.12")},
		{"alias.edgenode.test.", mdns.TypeCNAME, rrs("alias.edgenode.test. 300 IN CNAME static.edgenode.test.")},
		{"outside.edgenode.test.", mdns.TypeA, rrs("outside.edgenode.test. 300 IN CNAME example.com.")},
		{"a.b.deep.edgenode.test.", mdns.TypeA, rrs("a.b.deep.edgenode.test. 300 IN A 192.0.2.13")},
		{"fra.nodes.edgenode.test.", mdns.TypeA, rrs("fra.nodes.edgenode.test. 30 IN A 100.64.0.1")},
		{"SIN.Nodes.edgenode.test.", mdns.TypeAAAA, rrs("SIN.Nodes.edgenode.test. 30 IN AAAA fd00::5")},
		{"static.edgenode.test.", mdns.TypeANY, rrs(`static.edgenode.test. 3789 IN HINFO "RFC8482" ""`)},
		{"widget.edgenode.test.", mdns.TypeANY, rrs(`widget.edgenode.test. 3789 IN HINFO "RFC8482" ""`)},
		// Negative answers carry the SOA with the negative TTL.
		{"nope.edgenode.test.", mdns.TypeA, negative(mdns.RcodeNameError)},
		{"x.static.edgenode.test.", mdns.TypeA, negative(mdns.RcodeNameError)},
		{"nope.nodes.edgenode.test.", mdns.TypeA, negative(mdns.RcodeNameError)},
		{"static.edgenode.test.", mdns.TypeMX, negative(mdns.RcodeSuccess)},
		{"b.deep.edgenode.test.", mdns.TypeA, negative(mdns.RcodeSuccess)}, // empty non-terminal
		{"deep.edgenode.test.", mdns.TypeANY, negative(mdns.RcodeSuccess)},
		{"nodes.edgenode.test.", mdns.TypeA, negative(mdns.RcodeSuccess)},
		{"widget.edgenode.test.", mdns.TypeTXT, negative(mdns.RcodeSuccess)},
		{"fra.nodes.edgenode.test.", mdns.TypeMX, negative(mdns.RcodeSuccess)},
		{"static.edgenode.test.", mdns.TypeDNSKEY, negative(mdns.RcodeSuccess)},
		{"dangling.edgenode.test.", mdns.TypeA, func(t *testing.T, r *mdns.Msg) {
			if r.Rcode != mdns.RcodeNameError || len(r.Answer) != 1 || len(r.Ns) != 1 {
				t.Errorf("dangling CNAME: %v", r)
			}
		}},
		{"loop1.edgenode.test.", mdns.TypeA, func(t *testing.T, r *mdns.Msg) {
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != maxCNAMEHops+1 {
				t.Errorf("CNAME loop: %v", r)
			}
		}},
		{"www.edgenode.test.", mdns.TypeA, func(t *testing.T, r *mdns.Msg) {
			if len(r.Answer) != 3 || r.Answer[0].Header().Rrtype != mdns.TypeCNAME ||
				r.Answer[1].Header().Name != "widget.edgenode.test." {
				t.Errorf("CNAME to a dynamic name: %v", r.Answer)
			}
		}},
		{"example.com.", mdns.TypeA, func(t *testing.T, r *mdns.Msg) {
			if r.Rcode != mdns.RcodeRefused || r.Authoritative || len(r.Answer)+len(r.Ns) != 0 {
				t.Errorf("outside: %v", r)
			}
		}},
		{"test.", mdns.TypeSOA, func(t *testing.T, r *mdns.Msg) {
			if r.Rcode != mdns.RcodeRefused {
				t.Errorf("parent of the zone: %v", r)
			}
		}},
		{"edgenode.test.", mdns.TypeAXFR, func(t *testing.T, r *mdns.Msg) {
			if r.Rcode != mdns.RcodeRefused {
				t.Errorf("AXFR: %v", r)
			}
		}},
	}
	for _, c := range cases {
		for _, tcp := range []bool{false, true} {
			t.Run(c.name+"/"+mdns.TypeToString[c.qtype], func(t *testing.T) {
				r := ts.query(t, c.name, c.qtype, qopt{tcp: tcp})
				if r.RecursionAvailable {
					t.Errorf("RA set")
				}
				if r.Rcode != mdns.RcodeRefused && !r.Authoritative {
					t.Errorf("AA not set")
				}
				if len(r.Question) != 1 || r.Question[0].Name != c.name {
					t.Errorf("question %v", r.Question)
				}
				c.check(t, r)
			})
		}
	}
}

func TestUDPTCPAgreeAndTruncation(t *testing.T) {
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"static.edgenode.test.", mdns.TypeA}, {"edgenode.test.", mdns.TypeNS}, {"nope.edgenode.test.", mdns.TypeA},
		{"one.edgenode.test.", mdns.TypeA}, {"pdx.nodes.edgenode.test.", mdns.TypeAAAA},
	} {
		u := ts.query(t, q.name, q.qtype, qopt{edns: true, ecs: ecs("192.0.2.128/26")})
		c := ts.query(t, q.name, q.qtype, qopt{edns: true, ecs: ecs("192.0.2.128/26"), tcp: true})
		u.Id, c.Id = 0, 0
		if u.String() != c.String() {
			t.Errorf("%s: UDP and TCP differ:\n%s\n%s", q.name, u, c)
		}
	}
	// 12 TXT records of ~200 bytes: too big for 512 or 1232 bytes.
	for _, o := range []qopt{{}, {edns: true, bufsize: 1232}, {edns: true, bufsize: 4096}} {
		r := ts.query(t, "big.edgenode.test.", mdns.TypeTXT, o)
		if !r.Truncated || len(r.Answer) != 0 || r.Rcode != mdns.RcodeSuccess {
			t.Errorf("UDP %+v: tc=%v answers=%d", o, r.Truncated, len(r.Answer))
		}
		if o.edns && r.IsEdns0() == nil {
			t.Errorf("truncated reply lost its OPT")
		}
	}
	r := ts.query(t, "big.edgenode.test.", mdns.TypeTXT, qopt{tcp: true})
	if r.Truncated || len(r.Answer) != 12 {
		t.Errorf("TCP: tc=%v answers=%d", r.Truncated, len(r.Answer))
	}
	// A larger MaxUDPSize lets it through over UDP when the client allows.
	ts2 := startServer(t, "", fiveNodes(), func(o *Options) { o.MaxUDPSize = 4096 })
	r = ts2.query(t, "big.edgenode.test.", mdns.TypeTXT, qopt{edns: true, bufsize: 4096})
	if r.Truncated || len(r.Answer) != 12 || r.IsEdns0().UDPSize() != 4096 {
		t.Errorf("UDP 4096: tc=%v answers=%d", r.Truncated, len(r.Answer))
	}
}

func TestNoDatabaseFallsBackToRegion(t *testing.T) {
	nodes := fiveNodes()
	nodes[2].Self = true // iad, us-east
	nodes = append(nodes, nodemap.Node{ID: "iad2", Region: "us-east", Lat: 39, Lon: -77, State: nodemap.Alive,
		IPv4: ip("100.64.0.33"), Verified: true, Ready: true})
	ts := startServer(t, "", nodes, func(o *Options) {
		o.Overrides = []Override{{Prefix: pfx("192.0.2.0/24"), Country: "BR"}}
	})
	seen := map[string]bool{}
	for range 50 {
		r := ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("198.51.100.0/24")})
		if len(r.Answer) != 2 {
			t.Fatalf("answers %v", r.Answer)
		}
		for _, rr := range r.Answer {
			seen[rr.(*mdns.A).A.String()] = true
		}
	}
	if len(seen) != 2 || !seen["100.64.0.3"] || !seen["100.64.0.33"] {
		t.Errorf("unknown client, self in us-east: answered %v, want the two us-east nodes", seen)
	}
	// An override still places a client (Brazil's centre: São Paulo).
	r := ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/25")})
	if got := answerNodes(t, r); got[0] != "gru" {
		t.Errorf("override BR: %v", got)
	}
	if e := replyECS(r); e.SourceScope != 24 {
		t.Errorf("override scope %d, want 24", e.SourceScope)
	}
}

// TestEmbeddedSingleNode is the `make run` setup: zone edgenode.test, the
// dynamic name widget, the node itself (no place, no database) as the only
// member.
func TestEmbeddedSingleNode(t *testing.T) {
	self := []nodemap.Node{{ID: "local", State: nodemap.Alive, Self: true, IPv4: ip("127.0.0.1"), IPv6: ip("::1"), Verified: true, Ready: true}}
	pub := nodemap.NewPublisher(self)
	s, err := New(Options{
		Listen:  "127.0.0.1:0",
		Zones:   []Zone{{Origin: "edgenode.test"}},
		Dynamic: []DynamicName{{Name: "widget"}},
	}, pub, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(t.Context())
	u, tc := s.Addr()
	ts := &testServer{Server: s, pub: pub, udp: u.String(), tcp: tc.String()}
	for _, tcp := range []bool{false, true} {
		r := ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{tcp: tcp})
		if !r.Authoritative || len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "127.0.0.1" {
			t.Errorf("tcp=%v: %v", tcp, r)
		}
		r = ts.query(t, "widget.edgenode.test.", mdns.TypeAAAA, qopt{tcp: tcp})
		if len(r.Answer) != 1 || r.Answer[0].(*mdns.AAAA).AAAA.String() != "::1" {
			t.Errorf("AAAA tcp=%v: %v", tcp, r)
		}
		if r := ts.query(t, "example.com.", mdns.TypeA, qopt{tcp: tcp}); r.Rcode != mdns.RcodeRefused {
			t.Errorf("example.com: %v", r)
		}
		r = ts.query(t, "edgenode.test.", mdns.TypeSOA, qopt{tcp: tcp})
		if soa, ok := r.Answer[0].(*mdns.SOA); !ok || soa.Ns != "ns1.edgenode.test." || soa.Mbox != "hostmaster.edgenode.test." {
			t.Errorf("default SOA: %v", r)
		}
		r = ts.query(t, "local.nodes.edgenode.test.", mdns.TypeA, qopt{tcp: tcp})
		if len(r.Answer) != 1 {
			t.Errorf("per-node name: %v", r)
		}
	}
}
