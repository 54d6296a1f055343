package dns

import (
	"encoding/binary"
)

// Header flag bits.
const (
	flagQR     = 0x8000
	flagOpcode = 0x7800
	flagAA     = 0x0400
	flagTC     = 0x0200
	flagRD     = 0x0100
	flagCD     = 0x0010

	headerLen = 12
	// edns0DO is the DO bit in the OPT record's flags.
	edns0DO = 0x8000
	// optECS is the EDNS Client Subnet option code (RFC 7871).
	optECS = 8
)

// query is what the parser takes from a packet. It lives on the stack of
// the serving goroutine; qname points into the packet.
type query struct {
	id    uint16
	flags uint16

	hasQuestion bool
	qname       []byte // as received (case kept for the echo), wire format
	lname       [255]byte
	nlen        int // length of qname / lname
	qtype       uint16
	qclass      uint16

	edns    bool
	ednsVer uint8
	udpSize uint16
	do      bool

	ecs       bool
	ecsFamily uint16
	ecsSource uint8
	ecsAddr   [16]byte
}

// parse outcomes.
const (
	parseOK   = iota
	parseDrop // not worth an answer: too short for a header, or a response
	parseErr  // answer with rcode (header, question if parsed, OPT if parsed)
)

// parse reads a query. It accepts exactly one question without compression,
// skips any answer and authority records, and reads the additional section
// for one OPT record (RFC 6891) and its ECS option (RFC 7871). Anything
// malformed is FORMERR; trailing bytes after the last record are FORMERR.
func parse(pkt []byte, q *query) (outcome int, rcode int) {
	if len(pkt) < headerLen {
		return parseDrop, 0
	}
	q.id = binary.BigEndian.Uint16(pkt[0:])
	q.flags = binary.BigEndian.Uint16(pkt[2:])
	if q.flags&flagQR != 0 {
		// Never answer a response: that is how reflection loops start.
		return parseDrop, 0
	}
	if q.flags&flagOpcode != 0 {
		return parseErr, rcodeNotImp
	}
	qd := binary.BigEndian.Uint16(pkt[4:])
	an := binary.BigEndian.Uint16(pkt[6:])
	ns := binary.BigEndian.Uint16(pkt[8:])
	ar := binary.BigEndian.Uint16(pkt[10:])
	if qd != 1 {
		return parseErr, rcodeFormErr
	}
	off := headerLen
	// Question name: labels only, lower-cased as we copy.
	start := off
	n := 0
	for {
		if off >= len(pkt) {
			return parseErr, rcodeFormErr
		}
		l := int(pkt[off])
		if l&0xC0 != 0 {
			// A pointer cannot point anywhere useful from the first name.
			return parseErr, rcodeFormErr
		}
		if n+1+l > 255 || off+1+l > len(pkt) {
			return parseErr, rcodeFormErr
		}
		q.lname[n] = byte(l)
		n++
		off++
		if l == 0 {
			break
		}
		for i := 0; i < l; i++ {
			c := pkt[off+i]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			q.lname[n+i] = c
		}
		n += l
		off += l
	}
	if off+4 > len(pkt) {
		return parseErr, rcodeFormErr
	}
	q.qname = pkt[start:off]
	q.nlen = n
	q.qtype = binary.BigEndian.Uint16(pkt[off:])
	q.qclass = binary.BigEndian.Uint16(pkt[off+2:])
	q.hasQuestion = true
	off += 4

	for i := 0; i < int(an)+int(ns); i++ {
		var ok bool
		if off, ok = skipRR(pkt, off); !ok {
			return parseErr, rcodeFormErr
		}
	}
	for i := 0; i < int(ar); i++ {
		// OPT's owner must be the root; anything else is another record.
		if off+11 <= len(pkt) && pkt[off] == 0 && binary.BigEndian.Uint16(pkt[off+1:]) == typeOPT {
			if q.edns {
				return parseErr, rcodeFormErr // more than one OPT
			}
			q.edns = true
			q.udpSize = binary.BigEndian.Uint16(pkt[off+3:])
			q.ednsVer = pkt[off+6]
			q.do = binary.BigEndian.Uint16(pkt[off+7:])&edns0DO != 0
			rdlen := int(binary.BigEndian.Uint16(pkt[off+9:]))
			off += 11
			if off+rdlen > len(pkt) {
				q.edns = false // we could not read it; answer without OPT
				return parseErr, rcodeFormErr
			}
			if rc := parseOptions(pkt[off:off+rdlen], q); rc != rcodeSuccess {
				return parseErr, rc
			}
			off += rdlen
			continue
		}
		t, next, ok := rrType(pkt, off)
		if !ok {
			return parseErr, rcodeFormErr
		}
		if t == 250 || t == 24 {
			// TSIG or SIG(0): we hold no keys and cannot sign; a client
			// expecting a signed answer must not get an unsigned one.
			return parseErr, rcodeNotAuth
		}
		off = next
	}
	if off != len(pkt) {
		return parseErr, rcodeFormErr
	}
	if q.edns && q.ednsVer != 0 {
		return parseErr, rcodeBadVers
	}
	return parseOK, rcodeSuccess
}

// parseOptions reads EDNS options, keeping ECS and skipping the rest
// (cookies, padding, ... are optional to support).
func parseOptions(b []byte, q *query) int {
	for len(b) > 0 {
		if len(b) < 4 {
			return rcodeFormErr
		}
		code := binary.BigEndian.Uint16(b)
		l := int(binary.BigEndian.Uint16(b[2:]))
		if 4+l > len(b) {
			return rcodeFormErr
		}
		if code == optECS {
			if q.ecs {
				return rcodeFormErr // RFC 7871 7.1.1: one ECS per message
			}
			if rc := parseECS(b[4:4+l], q); rc != rcodeSuccess {
				return rc
			}
		}
		b = b[4+l:]
	}
	return rcodeSuccess
}

// parseECS validates an ECS option per RFC 7871 section 6 and 7.1.1:
// known family, source prefix within the family, scope 0 in a query, exactly
// ceil(source/8) address bytes and no bits set past the source prefix.
func parseECS(b []byte, q *query) int {
	if len(b) < 4 {
		return rcodeFormErr
	}
	fam := binary.BigEndian.Uint16(b)
	src, scope := b[2], b[3]
	addr := b[4:]
	var maxBits int
	switch fam {
	case 1:
		maxBits = 32
	case 2:
		maxBits = 128
	default:
		return rcodeFormErr
	}
	if int(src) > maxBits || scope != 0 {
		return rcodeFormErr
	}
	if len(addr) != (int(src)+7)/8 {
		return rcodeFormErr
	}
	if r := src % 8; r != 0 && addr[len(addr)-1]&(0xFF>>r) != 0 {
		return rcodeFormErr
	}
	q.ecs = true
	q.ecsFamily = fam
	q.ecsSource = src
	copy(q.ecsAddr[:], addr)
	return rcodeSuccess
}

// skipName steps over a possibly compressed name.
func skipName(pkt []byte, off int) (int, bool) {
	for n := 0; ; n++ {
		if off >= len(pkt) || n > 127 {
			return 0, false
		}
		l := int(pkt[off])
		switch l & 0xC0 {
		case 0x00:
			if l == 0 {
				return off + 1, true
			}
			off += 1 + l
		case 0xC0:
			if off+2 > len(pkt) {
				return 0, false
			}
			return off + 2, true
		default:
			return 0, false // 0x40 and 0x80 label types are obsolete
		}
	}
}

func rrType(pkt []byte, off int) (t uint16, next int, ok bool) {
	off, ok = skipName(pkt, off)
	if !ok || off+10 > len(pkt) {
		return 0, 0, false
	}
	t = binary.BigEndian.Uint16(pkt[off:])
	rdlen := int(binary.BigEndian.Uint16(pkt[off+8:]))
	off += 10
	if off+rdlen > len(pkt) {
		return 0, 0, false
	}
	return t, off + rdlen, true
}

func skipRR(pkt []byte, off int) (int, bool) {
	_, next, ok := rrType(pkt, off)
	return next, ok
}

// put16 appends v big-endian.
func put16(b []byte, v uint16) []byte { return append(b, byte(v>>8), byte(v)) }

func put32(b []byte, v uint32) []byte {
	return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// putOwner appends a name that already sits at off in the packet: as a
// compression pointer when off is reachable, else spelled out.
func putOwner(b []byte, off int, name string) []byte {
	if off < 0x4000 {
		return append(b, 0xC0|byte(off>>8), byte(off))
	}
	return append(b, name...)
}
