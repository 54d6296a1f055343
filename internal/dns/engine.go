package dns

import (
	"encoding/binary"
	"net/netip"
	"unsafe"

	"github.com/edgenode/edgenode/internal/dns/geoindex"
)

// Transports, also metric label indexes.
const (
	trUDP = 0
	trTCP = 1
)

// maxTCPMessage is the largest DNS message a TCP length prefix can carry.
const maxTCPMessage = 65535

// handle answers one packet into out (reused by the caller; it must have
// room for a full response to avoid growing) and returns the response, or
// nil to send nothing. client is the resolver's address. The query counts
// in the server's common tally for tr (the TCP connections' for trTCP);
// a UDP socket's loop calls handleTally with its own.
func (s *Server) handle(pkt []byte, client netip.Addr, tr int, out []byte) []byte {
	return s.handleTally(s.m.common[tr], pkt, client, out)
}

// handleTally is handle counting in t, whose transport it answers for.
func (s *Server) handleTally(t *tally, pkt []byte, client netip.Addr, out []byte) []byte {
	var q query
	outcome, rc := parse(pkt, &q)
	return s.respond(t, &q, outcome, rc, client, out)
}

// handleCut answers the start of a UDP datagram too big for the read
// buffer: as the whole would have been (nothing for what parse drops),
// except that a query that parses cleanly, being cut, is a FORMERR.
func (s *Server) handleCut(t *tally, pkt []byte, client netip.Addr, out []byte) []byte {
	var q query
	outcome, rc := parse(pkt, &q)
	if outcome == parseOK {
		outcome, rc = parseErr, rcodeFormErr
	}
	return s.respond(t, &q, outcome, rc, client, out)
}

// respond answers q, which parse read with outcome and rc.
func (s *Server) respond(t *tally, q *query, outcome, rc int, client netip.Addr, out []byte) []byte {
	tr := t.tr
	if outcome == parseDrop {
		t.drop(dropMalformed)
		return nil
	}
	if rl := s.rrl.Load(); tr == trUDP && rl != nil {
		switch rl.check(client) {
		case rrlDrop:
			t.drop(dropRRL)
			return nil
		case rrlSlip:
			t.slipped.Add(1)
			return s.errorResponse(out, q, rcodeSuccess, true, tr)
		}
	}
	if outcome == parseErr {
		resp := s.errorResponse(out, q, rc, false, tr)
		t.query(q, rc)
		return resp
	}
	resp, rc := s.answer(out, q, client, tr)
	t.query(q, rc)
	return resp
}

// udpLimit is the largest response the client can take over UDP.
func (s *Server) udpLimit(q *query) int {
	if !q.edns {
		return 512
	}
	return max(512, min(int(q.udpSize), s.opts.MaxUDPSize))
}

// begin writes the header (counts filled in by finish) and the question.
func begin(out []byte, q *query) []byte {
	out = append(out[:0], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	if q.hasQuestion {
		out = append(out, q.qname...)
		out = put16(out, q.qtype)
		out = put16(out, q.qclass)
	}
	return out
}

// errorResponse answers with rcode and no records, or, for tc, an empty
// truncated answer that sends the client to TCP.
func (s *Server) errorResponse(out []byte, q *query, rcode int, tc bool, tr int) []byte {
	out = begin(out, q)
	return s.finish(out, q, tr, reply{rcode: rcode, tc: tc, qEnd: len(out)})
}

// reply is what finish needs to know about a response whose records are
// written: it goes into the header and the OPT record. It is passed by
// value, so answering allocates nothing.
type reply struct {
	rcode  int
	an, ns uint16 // answer and authority records after the question
	aa, tc bool   // authoritative answer, truncated
	scope  uint8  // ECS scope prefix length
	qEnd   int    // where the question ends: a response too big is cut back to it
}

// finish appends the OPT record when the query had one, truncates to what
// the transport allows and fills in the header.
func (s *Server) finish(out []byte, q *query, tr int, r reply) []byte {
	limit := maxTCPMessage
	if tr == trUDP {
		limit = s.udpLimit(q)
	}
	ecs := q.ecs && (r.rcode == rcodeSuccess || r.rcode == rcodeNXDomain)
	optLen := 0
	if q.edns {
		optLen = 11
		if ecs {
			optLen += 8 + (int(q.ecsSource)+7)/8
		}
	}
	if len(out)+optLen > limit {
		// Too big: no records at all and TC set (RFC 2181 9), so the
		// client retries over TCP rather than caching a partial RRset.
		out = out[:r.qEnd]
		r.an, r.ns, r.tc = 0, 0, true
	}
	ar := uint16(0)
	if q.edns {
		ar = 1
		out = append(out, 0)
		out = put16(out, typeOPT)
		out = put16(out, uint16(s.opts.MaxUDPSize))
		flags := uint16(0)
		if q.do {
			flags = edns0DO
		}
		out = append(out, byte(r.rcode>>4), 0)
		out = put16(out, flags)
		if ecs {
			alen := (int(q.ecsSource) + 7) / 8
			out = put16(out, uint16(8+alen))
			out = put16(out, optECS)
			out = put16(out, uint16(4+alen))
			out = put16(out, q.ecsFamily)
			out = append(out, q.ecsSource, r.scope)
			out = append(out, q.ecsAddr[:alen]...)
		} else {
			out = put16(out, 0)
		}
	}
	flags := uint16(flagQR) | q.flags&(flagOpcode|flagRD|flagCD) | uint16(r.rcode&0xF)
	if r.aa {
		flags |= flagAA
	}
	if r.tc {
		flags |= flagTC
	}
	qd := uint16(0)
	if q.hasQuestion {
		qd = 1
	}
	binary.BigEndian.PutUint16(out[0:], q.id)
	binary.BigEndian.PutUint16(out[2:], flags)
	binary.BigEndian.PutUint16(out[4:], qd)
	binary.BigEndian.PutUint16(out[6:], r.an)
	binary.BigEndian.PutUint16(out[8:], r.ns)
	binary.BigEndian.PutUint16(out[10:], ar)
	return out
}

// nameString views the lower-cased query name as a string without copying,
// for map lookups; q outlives every use.
func nameString(q *query) string {
	return unsafe.String(&q.lname[0], q.nlen)
}

// answer resolves the question against the zones and the current view.
func (s *Server) answer(out []byte, q *query, client netip.Addr, tr int) ([]byte, int) {
	out = begin(out, q)
	qEnd := len(out)
	switch {
	case q.qclass != classIN:
		return s.finish(out, q, tr, reply{rcode: rcodeRefused, qEnd: qEnd}), rcodeRefused
	case q.qtype == typeAXFR || q.qtype == typeIXFR:
		return s.finish(out, q, tr, reply{rcode: rcodeRefused, qEnd: qEnd}), rcodeRefused
	case q.qtype == typeMAILA || q.qtype == typeMAILB:
		return s.finish(out, q, tr, reply{rcode: rcodeNotImp, qEnd: qEnd}), rcodeNotImp
	}
	v := s.currentView()
	r := reply{rcode: rcodeSuccess, aa: true, qEnd: qEnd}
	owner := headerLen // where the current name sits in the packet
	name := nameString(q)
	for hop := 0; ; hop++ {
		e := v.c.names[name]
		var z *zone
		node := int32(-1)
		if e != nil {
			z = e.zone
		} else if ref, ok := v.ns.byName[name]; ok {
			node, z = ref.node, ref.zone
		} else {
			z = v.c.findZone(name)
		}
		if z == nil {
			if hop == 0 {
				r.rcode, r.aa = rcodeRefused, false
			}
			// A CNAME leading out of our zones: the chain so far is the
			// answer; the resolver follows it.
			break
		}
		if e == nil && node < 0 {
			r.rcode = rcodeNXDomain
			out = s.putSOA(out, owner, name, z)
			r.ns++
			break
		}
		if e != nil && e.cname != nil {
			out = putOwner(out, owner, name)
			out = append(out, e.cname.tails[0]...)
			r.an++
			if q.qtype == typeCNAME || hop == maxCNAMEHops {
				break
			}
			name = e.cname.target
			owner = len(out) - len(name) // the target ends the CNAME's RDATA
			continue
		}
		var n uint16
		out, n, r.scope = s.putData(out, owner, name, e, node, q, client, v)
		r.an += n
		if n == 0 {
			out = s.putSOA(out, owner, name, z) // NODATA
			r.ns++
		}
		break
	}
	return s.finish(out, q, tr, r), r.rcode
}

// findZone returns the zone enclosing name, or nil.
func (c *compiled) findZone(name string) *zone {
	for off := 0; off < len(name) && name[off] != 0; off += 1 + int(name[off]) {
		if z := c.zones[name[off:]]; z != nil {
			return z
		}
	}
	return nil
}

// putSOA appends the zone's SOA for a negative answer. Its owner, the apex,
// is the tail of name, which sits at owner in the packet.
func (s *Server) putSOA(out []byte, owner int, name string, z *zone) []byte {
	apexOff := owner + len(name) - len(z.origin)
	out = putOwner(out, apexOff, z.origin)
	return append(out, z.negSOA...)
}

// putData appends the records of one existing name for q.qtype.
func (s *Server) putData(out []byte, owner int, name string, e *entry, node int32, q *query,
	client netip.Addr, v *view) ([]byte, uint16, uint8) {
	if q.qtype == typeANY {
		// RFC 8482: one synthesized HINFO instead of everything.
		if node >= 0 || e.hasData() {
			out = putOwner(out, owner, name)
			return append(out, v.c.hinfo...), 1, 0
		}
		return out, 0, 0
	}
	if node >= 0 {
		ni := &v.ns.nodes[node]
		switch {
		case q.qtype == typeA && ni.hasV4:
			return putAddr(out, owner, typeA, s.nodeTTL, ni.v4[:]), 1, 0
		case q.qtype == typeAAAA && ni.hasV6:
			return putAddr(out, owner, typeAAAA, s.nodeTTL, ni.v6[:]), 1, 0
		}
		return out, 0, 0
	}
	if e.dyn >= 0 && (q.qtype == typeA || q.qtype == typeAAAA) {
		return s.putDynamic(out, owner, &v.c.dynamics[e.dyn], q, client, v)
	}
	set := e.set(q.qtype)
	if set == nil {
		return out, 0, 0
	}
	for _, t := range set.tails {
		out = putOwner(out, owner, name)
		out = append(out, t...)
	}
	return out, uint16(len(set.tails)), 0
}

func putAddr(out []byte, owner int, t uint16, ttl uint32, addr []byte) []byte {
	out = putOwner(out, owner, "")
	out = put16(out, t)
	out = put16(out, classIN)
	out = put32(out, ttl)
	out = put16(out, uint16(len(addr)))
	return append(out, addr...)
}

// putDynamic appends the K nearest members (ready serving nodes, or when
// none is ready the serving ones) and returns the ECS scope.
func (s *Server) putDynamic(out []byte, owner int, d *dynamic, q *query, client netip.Addr, v *view) ([]byte, uint16, uint8) {
	fam := famV4
	if q.qtype == typeAAAA {
		fam = famV6
	}
	ms := &v.ns.pools[d.pool][fam]
	loc, known, scope := locate(q, client, v.ix)
	if len(ms.node) == 0 {
		return out, 0, scope
	}
	r := v.ranking(d.pool, fam, loc, known, ms, v.c.slackKM)
	first := int32(-1)
	if s.opts.Measured != nil {
		if a, bits, ok := measuredClient(q, client); ok {
			if first = preferred(v.ns, ms, s.opts.Measured.Prefer(a)); first >= 0 && q.ecs {
				// The answer is specific to the client's /24 (/48).
				scope = max(scope, bits)
			}
		}
	}
	var buf [32]int32
	sel := pick(r, v.ns, ms, d.k, first, buf[:0])
	if first >= 0 {
		s.m.measuredAnswers.Inc()
	}
	for _, m := range sel {
		ni := &v.ns.nodes[ms.node[m]]
		if fam == famV4 {
			out = putAddr(out, owner, typeA, d.ttl, ni.v4[:])
		} else {
			out = putAddr(out, owner, typeAAAA, d.ttl, ni.v6[:])
		}
	}
	if len(sel) > 0 {
		v.ns.nodes[ms.node[sel[0]]].answers.Inc()
		if ms.unready {
			s.m.unreadyAnswers.Inc()
		}
	}
	return out, uint16(len(sel)), scope
}

// locate places the client: the ECS address when the query has one, else
// the resolver. scope is the ECS scope prefix for the reply: the length of
// the network that matched, or the source prefix when nothing did.
func locate(q *query, client netip.Addr, ix *geoindex.Index) (loc uint32, known bool, scope uint8) {
	if q.ecs {
		if q.ecsSource == 0 {
			// RFC 7871 7.1.2: the resolver asks us not to use its
			// address; the answer suits everyone.
			return 0, false, 0
		}
		var a netip.Addr
		if q.ecsFamily == 1 {
			a = netip.AddrFrom4([4]byte(q.ecsAddr[:4]))
		} else {
			a = netip.AddrFrom16(q.ecsAddr)
		}
		id, bits, ok := ix.Lookup(a)
		if !ok {
			return 0, false, q.ecsSource
		}
		return id, true, uint8(bits)
	}
	id, _, ok := ix.Lookup(client)
	return id, ok, 0
}
