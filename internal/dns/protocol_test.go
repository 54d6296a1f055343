package dns

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/edgenode/edgenode/internal/testkit"
)

// rawConn sends hand-made packets over a real UDP socket.
type rawConn struct {
	t *testing.T
	c *net.UDPConn
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c}
}

func (r *rawConn) send(pkt []byte) {
	r.t.Helper()
	if _, err := r.c.Write(pkt); err != nil {
		r.t.Fatal(err)
	}
}

// recv reads the next reply; the deadline only guards against a hang.
func (r *rawConn) recv() *mdns.Msg {
	r.t.Helper()
	buf := make([]byte, 65536)
	_ = r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := r.c.Read(buf)
	if err != nil {
		r.t.Fatalf("no reply: %v", err)
	}
	m := new(mdns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		r.t.Fatalf("reply does not parse: %v (% x)", err, buf[:n])
	}
	return m
}

func packQuery(t *testing.T, id uint16, name string, qtype uint16, opts ...mdns.EDNS0) []byte {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	if opts != nil {
		m.SetEdns0(1232, false)
		o := m.IsEdns0()
		for _, e := range opts {
			if e != nil {
				o.Option = append(o.Option, e)
			}
		}
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// withOPT packs a query whose OPT RDATA is exactly rdata (for malformed
// options miekg would refuse to pack).
func withOPT(t *testing.T, id uint16, rdata []byte) []byte {
	b := packQuery(t, id, "widget.edgenode.test.", mdns.TypeA)
	binary.BigEndian.PutUint16(b[10:], 1)
	b = append(b, 0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(rdata)))
	return append(b, rdata...)
}

func ecsRaw(family uint16, source, scope uint8, addr ...byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, 8)
	b = binary.BigEndian.AppendUint16(b, uint16(4+len(addr)))
	b = binary.BigEndian.AppendUint16(b, family)
	b = append(b, source, scope)
	return append(b, addr...)
}

func TestMalformedECSIsFormErr(t *testing.T) {
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	rc := dialRaw(t, ts.udp)
	good := ecsRaw(1, 24, 0, 192, 0, 2)
	cases := map[string][]byte{
		"unknown family":      ecsRaw(3, 24, 0, 192, 0, 2),
		"family zero":         ecsRaw(0, 0, 0),
		"source > 32":         ecsRaw(1, 33, 0, 192, 0, 2, 1, 1),
		"source > 128":        ecsRaw(2, 129, 0, make([]byte, 17)...),
		"scope set in query":  ecsRaw(1, 24, 8, 192, 0, 2),
		"too many addr bytes": ecsRaw(1, 24, 0, 192, 0, 2, 0),
		"too few addr bytes":  ecsRaw(1, 24, 0, 192, 0),
		"bits past source":    ecsRaw(1, 22, 0, 192, 0, 3),
		"short option":        {0, 8, 0, 2, 0, 1},
		"option overruns":     {0, 8, 0, 9, 0, 1, 24, 0, 192},
		"two ECS options":     append(append([]byte{}, good...), good...),
	}
	id := uint16(100)
	for name, rdata := range cases {
		id++
		rc.send(withOPT(t, id, rdata))
		r := rc.recv()
		if r.Id != id || r.Rcode != mdns.RcodeFormatError || len(r.Answer) != 0 {
			t.Errorf("%s: id %d rcode %s answers %d", name, r.Id, mdns.RcodeToString[r.Rcode], len(r.Answer))
		}
	}
	// The well-formed one, plus unknown options around it, is answered.
	rc.send(withOPT(t, 1, append(append([]byte{0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8}, good...), 0, 12, 0, 0)))
	if r := rc.recv(); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 2 || replyECS(r).SourceScope != 26 {
		t.Errorf("good ECS with cookie and padding: %v", r)
	}
}

func TestProtocolEdges(t *testing.T) {
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	rc := dialRaw(t, ts.udp)
	q := packQuery(t, 7, "static.edgenode.test.", mdns.TypeA)

	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, q...)) }
	cases := []struct {
		name  string
		pkt   []byte
		rcode int
	}{
		{"NOTIFY", mutate(func(b []byte) []byte { b[2] |= 4 << 3; return b }), mdns.RcodeNotImplemented},
		{"no question", mutate(func(b []byte) []byte { b[5] = 0; return b[:12] }), mdns.RcodeFormatError},
		{"two questions", mutate(func(b []byte) []byte { b[5] = 2; return append(b, b[12:]...) }), mdns.RcodeFormatError},
		{"trailing garbage", mutate(func(b []byte) []byte { return append(b, 1, 2, 3) }), mdns.RcodeFormatError},
		{"cut in the name", mutate(func(b []byte) []byte { return b[:16] }), mdns.RcodeFormatError},
		{"cut in the type", mutate(func(b []byte) []byte { return b[:len(b)-3] }), mdns.RcodeFormatError},
		{"pointer in question", mutate(func(b []byte) []byte { return append(b[:12], 0xC0, 12, 0, 1, 0, 1) }), mdns.RcodeFormatError},
		{"oversized", mutate(func(b []byte) []byte { return append(b, make([]byte, 6000)...) }), mdns.RcodeFormatError},
		{"class CH", mutate(func(b []byte) []byte { b[len(b)-1] = 3; return b }), mdns.RcodeRefused},
		{"answer count lies", mutate(func(b []byte) []byte { b[7] = 1; return b }), mdns.RcodeFormatError},
	}
	for i, c := range cases {
		id := uint16(1000 + i)
		binary.BigEndian.PutUint16(c.pkt, id)
		rc.send(c.pkt)
		r := rc.recv()
		if r.Id != id || r.Rcode != c.rcode || !r.Response || r.RecursionAvailable {
			t.Errorf("%s: id %d rcode %s", c.name, r.Id, mdns.RcodeToString[r.Rcode])
		}
	}

	// Dropped silently: too short for a header, and responses (no loops).
	// The next reply must be the one to the query sent after them.
	rc.send([]byte{1, 2, 3})
	rc.send(mutate(func(b []byte) []byte { b[2] |= 0x80; return b }))
	rc.send(packQuery(t, 4242, "static.edgenode.test.", mdns.TypeA))
	if r := rc.recv(); r.Id != 4242 {
		t.Errorf("reply to a dropped packet: id %d", r.Id)
	}

	// EDNS: version 1 gets BADVERS; DO is echoed; our size is advertised.
	m := new(mdns.Msg)
	m.SetQuestion("static.edgenode.test.", mdns.TypeA)
	m.SetEdns0(4096, true)
	m.IsEdns0().SetVersion(1)
	b, _ := m.Pack()
	rc.send(b)
	if r := rc.recv(); r.Rcode != mdns.RcodeBadVers || r.IsEdns0() == nil || r.IsEdns0().Version() != 0 {
		t.Errorf("EDNS version 1: rcode %s", mdns.RcodeToString[r.Rcode])
	}
	m.IsEdns0().SetVersion(0)
	b, _ = m.Pack()
	rc.send(b)
	if r := rc.recv(); r.Rcode != 0 || !r.IsEdns0().Do() || r.IsEdns0().UDPSize() != 1232 || len(r.Answer) != 2 {
		t.Errorf("EDNS with DO: %v", r)
	}

	// TSIG in the additional section: we hold no keys.
	m = new(mdns.Msg)
	m.SetQuestion("static.edgenode.test.", mdns.TypeA)
	m.SetTsig("key.", mdns.HmacSHA256, 300, time.Now().Unix())
	b, _, err := mdns.TsigGenerate(m, "c2VjcmV0", "", false)
	if err != nil {
		t.Fatal(err)
	}
	rc.send(b)
	if r := rc.recv(); r.Rcode != mdns.RcodeNotAuth {
		t.Errorf("TSIG: rcode %s", mdns.RcodeToString[r.Rcode])
	}

	// 0x20 case randomisation comes back as sent.
	rc.send(packQuery(t, 9, "StAtIc.EdGeNoDe.TeSt.", mdns.TypeA))
	if r := rc.recv(); r.Question[0].Name != "StAtIc.EdGeNoDe.TeSt." || r.Answer[0].Header().Name != "StAtIc.EdGeNoDe.TeSt." {
		t.Errorf("case not kept: %v", r)
	}

	// TCP: a malformed message closes nothing but gets FORMERR; pipelined
	// queries are answered in order on one connection.
	c, err := net.Dial("tcp", ts.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	for i, p := range [][]byte{
		packQuery(t, 1, "static.edgenode.test.", mdns.TypeA),
		append(packQuery(t, 2, "static.edgenode.test.", mdns.TypeA), 9, 9),
		packQuery(t, 3, "nope.edgenode.test.", mdns.TypeA),
	} {
		_ = i
		out.Write(binary.BigEndian.AppendUint16(nil, uint16(len(p))))
		out.Write(p)
	}
	if _, err := c.Write(out.Bytes()); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for _, want := range []struct {
		id    uint16
		rcode int
	}{{1, 0}, {2, mdns.RcodeFormatError}, {3, mdns.RcodeNameError}} {
		conn := &mdns.Conn{Conn: c}
		r, err := conn.ReadMsg()
		if err != nil {
			t.Fatalf("tcp read: %v", err)
		}
		if r.Id != want.id || r.Rcode != want.rcode {
			t.Errorf("tcp: id %d rcode %d, want %d %d", r.Id, r.Rcode, want.id, want.rcode)
		}
	}
}

func TestRRL(t *testing.T) {
	ts := startServer(t, "", fiveNodes(), func(o *Options) {
		o.RRL = RRLOptions{Enabled: true, ResponsesPerSecond: 5, Slip: 2, Loopback: true}
	})
	rc := dialRaw(t, ts.udp)
	const n = 60
	for i := range n {
		rc.send(packQuery(t, uint16(i), "static.edgenode.test.", mdns.TypeA))
	}
	// Each query is answered, sent back truncated (slip) or dropped, and
	// counted as such. Once all n are counted, the number of replies on
	// their way is known: read exactly those, with no wait for silence.
	var dropped float64
	testkit.WaitFor(t, settle, "every query answered, slipped or dropped", func() bool {
		dropped = metricValue(t, ts.reg, "edgenode_dns_dropped_total", "reason", "rrl")
		return metricValue(t, ts.reg, "edgenode_dns_queries_total", "qtype", "A", "rcode", "NOERROR", "transport", "udp")+
			metricValue(t, ts.reg, "edgenode_dns_rrl_slipped_total")+dropped == n
	})
	buf := make([]byte, 4096)
	answered, truncated := 0, 0
	for i := range n - int(dropped) {
		_ = rc.c.SetReadDeadline(time.Now().Add(settle))
		k, err := rc.c.Read(buf)
		if err != nil {
			t.Fatalf("reply %d of %d: %v", i+1, n-int(dropped), err)
		}
		m := new(mdns.Msg)
		if err := m.Unpack(buf[:k]); err != nil {
			t.Fatal(err)
		}
		if m.Truncated {
			truncated++
		} else {
			answered++
		}
	}
	// The burst of 5 is answered; refills during the sending add a few more
	// (the exact count depends on the clock, so only bound it loosely; the
	// bucket arithmetic is tested with a fake clock in TestRRLBuckets).
	if answered < 5 || answered >= n-10 {
		t.Errorf("answered %d of %d at 5/s", answered, n)
	}
	limited := n - answered
	if truncated < limited/2-1 || truncated > limited/2+1 {
		t.Errorf("truncated %d of %d limited, want every second one (slip 2)", truncated, limited)
	}
	// Loopback is exempt unless asked: a default server answers all.
	ts2 := startServer(t, "", fiveNodes(), func(o *Options) {
		o.RRL = RRLOptions{Enabled: true, ResponsesPerSecond: 1}
	})
	for i := range 20 {
		if r := ts2.query(t, "static.edgenode.test.", mdns.TypeA, qopt{}); r.Truncated || len(r.Answer) != 2 {
			t.Fatalf("query %d limited on loopback", i)
		}
	}
}

func TestRRLBuckets(t *testing.T) {
	a, b := ip("192.0.2.1"), ip("192.0.2.200") // one /24
	c := ip("198.51.100.1")
	v6a, v6b := ip("2001:db8:0:1::1"), ip("2001:db8:0:2::1") // one /56
	// The seed is random: take a limiter in which the three prefixes share
	// no bucket, as they almost always do (sharing is tested below).
	var r *rrl
	for r == nil || sharesBucket(r, a, c) || sharesBucket(r, a, v6a) || sharesBucket(r, c, v6a) {
		r = newRRL(RRLOptions{ResponsesPerSecond: 2, Slip: 3, Loopback: true})
	}
	now := int64(0)
	r.now = func() int64 { return now }
	for _, x := range []struct {
		addr netip.Addr
		want int
	}{{a, rrlAnswer}, {b, rrlAnswer}, {a, rrlDrop}, {b, rrlDrop}, {a, rrlSlip}, {c, rrlAnswer},
		{v6a, rrlAnswer}, {v6b, rrlAnswer}, {v6a, rrlDrop}} {
		if got := r.check(x.addr); got != x.want {
			t.Errorf("%s: %d, want %d", x.addr, got, x.want)
		}
	}
	now += int64(time.Second / 2) // one token back
	if r.check(a) != rrlAnswer || r.check(a) != rrlDrop {
		t.Errorf("refill")
	}
}

func sharesBucket(r *rrl, x, y netip.Addr) bool {
	sx, ix, jx := r.buckets(x)
	sy, iy, jy := r.buckets(y)
	return sx == sy && (ix == iy || ix == jy || jx == iy || jx == jy)
}

// TestRRLSharedBucketOnlyStricter: a prefix that shares a bucket with a
// busy one is limited by both, and the busy one never refills the other's
// bucket, whatever order their queries come in.
func TestRRLSharedBucketOnlyStricter(t *testing.T) {
	r := newRRL(RRLOptions{ResponsesPerSecond: 3, Slip: -1, Loopback: true})
	r.now = func() int64 { return 1 } // no refill during the test
	victim := ip("192.0.2.1")
	var other netip.Addr
	for i := 0; !other.IsValid(); i++ {
		if i == 1<<16 {
			t.Fatal("no prefix sharing the victim's bucket")
		}
		if a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}); sharesBucket(r, victim, a) {
			other = a
		}
	}
	answered := 0
	for range 10 {
		if r.check(victim) == rrlAnswer {
			answered++
		}
		r.check(other)
	}
	if answered > 3 {
		t.Errorf("victim answered %d times with a burst of 3", answered)
	}
}
