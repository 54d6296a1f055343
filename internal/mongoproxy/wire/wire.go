// Package wire is a strict codec for the MongoDB wire protocol messages the
// proxy has to understand: the 16-byte message header, OP_MSG (body and
// document-sequence sections, optional CRC-32C checksum), and the legacy
// OP_QUERY / OP_REPLY pair that drivers still use for the first handshake.
//
// Every parser here reads bytes from untrusted clients, so each one checks
// every length against the bytes actually present and fails with an error
// (never a panic, never an out-of-range slice) on anything malformed. BSON
// documents are validated recursively with exact lengths (see ValidateBSON):
// the driver's own Raw.Validate is shallow and tolerates trailing bytes, which
// is fine for a client but not for a proxy that re-encodes documents.
//
// OP_COMPRESSED is recognised only to be refused: the proxy strips
// compression from the handshake so a well-behaved client never sends it.
//
// Parsed documents alias the message buffer; copy them if the buffer is reused.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Op codes (https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/).
const (
	OpReply       int32 = 1
	OpUpdate      int32 = 2001
	OpInsert      int32 = 2002
	OpQuery       int32 = 2004
	OpGetMore     int32 = 2005
	OpDelete      int32 = 2006
	OpKillCursors int32 = 2007
	OpCompressed  int32 = 2012
	OpMsg         int32 = 2013
)

// OP_MSG flag bits.
const (
	FlagChecksumPresent uint32 = 1 << 0
	FlagMoreToCome      uint32 = 1 << 1
	FlagExhaustAllowed  uint32 = 1 << 16
	// requiredBitsMask covers bits 0-15: a receiver must reject unknown ones.
	requiredBitsMask uint32 = 0xFFFF
	knownRequired           = FlagChecksumPresent | FlagMoreToCome
)

// HeaderLen is the size of the standard message header.
const HeaderLen = 16

// DefaultMaxMessageSize is MongoDB's maxMessageSizeBytes.
const DefaultMaxMessageSize = 48_000_000

// ErrCompressed is returned for OP_COMPRESSED messages, which the proxy never negotiates.
var ErrCompressed = errors.New("wire: OP_COMPRESSED is not supported (compression is never negotiated by the proxy)")

// Header is the standard message header.
type Header struct {
	Length     int32
	RequestID  int32
	ResponseTo int32
	OpCode     int32
}

// ParseHeader decodes the first 16 bytes of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, fmt.Errorf("wire: header needs %d bytes, have %d", HeaderLen, len(b))
	}
	return Header{
		Length:     int32(binary.LittleEndian.Uint32(b[0:])),
		RequestID:  int32(binary.LittleEndian.Uint32(b[4:])),
		ResponseTo: int32(binary.LittleEndian.Uint32(b[8:])),
		OpCode:     int32(binary.LittleEndian.Uint32(b[12:])),
	}, nil
}

func putHeader(b []byte, h Header) {
	binary.LittleEndian.PutUint32(b[0:], uint32(h.Length))
	binary.LittleEndian.PutUint32(b[4:], uint32(h.RequestID))
	binary.LittleEndian.PutUint32(b[8:], uint32(h.ResponseTo))
	binary.LittleEndian.PutUint32(b[12:], uint32(h.OpCode))
}

// Growth of ReadMessage's buffer while a message arrives: it starts at
// growMin and at most doubles, by growMax at most, each time it is full.
const (
	growMin = 64 << 10
	growMax = 8 << 20
)

// ReadMessage reads one whole message (header included) from r. buf is reused
// when it is large enough. A length below the header size or above limit is an
// error before anything is allocated, so a hostile length cannot make the
// proxy allocate gigabytes. Nor does a length it allows: the buffer grows as
// the body arrives (to at most twice the bytes received, plus 64 KiB), so a
// client that announces 48 MB and sends 16 bytes costs 64 KiB, not 48 MB.
func ReadMessage(r io.Reader, buf []byte, limit int) ([]byte, error) {
	if limit <= 0 {
		limit = DefaultMaxMessageSize
	}
	var hdr [HeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.LittleEndian.Uint32(hdr[:])))
	if n < HeaderLen {
		return nil, fmt.Errorf("wire: message length %d is shorter than the header", n)
	}
	if n > limit {
		return nil, fmt.Errorf("wire: message length %d exceeds the maximum %d", n, limit)
	}
	if cap(buf) < min(n, growMin) {
		buf = make([]byte, 0, min(n, growMin))
	}
	buf = append(buf[:0], hdr[:]...)
	for len(buf) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, len(buf)+min(max(len(buf), growMin), growMax)))
			copy(grown, buf)
			buf = grown
		}
		end := min(n, cap(buf))
		got, err := io.ReadFull(r, buf[len(buf):end])
		buf = buf[:len(buf)+got]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("wire: reading %d-byte message body (%d received): %w", n-HeaderLen, len(buf)-HeaderLen, err)
		}
	}
	return buf, nil
}

// checkLength verifies the header's length equals the buffer's.
func checkLength(b []byte) (Header, error) {
	h, err := ParseHeader(b)
	if err != nil {
		return h, err
	}
	if int(h.Length) != len(b) {
		return h, fmt.Errorf("wire: header says %d bytes, message has %d", h.Length, len(b))
	}
	return h, nil
}

// Sequence is an OP_MSG kind-1 section: a named run of documents (for
// example "documents" of an insert).
type Sequence struct {
	Identifier string
	Docs       [][]byte
}

// Msg is a decoded OP_MSG.
type Msg struct {
	Header    Header
	Flags     uint32
	Body      []byte // the single kind-0 section
	Sequences []Sequence
}

// MoreToCome reports whether the sender expects no reply (w:0 writes, exhaust replies).
func (m *Msg) MoreToCome() bool { return m.Flags&FlagMoreToCome != 0 }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ParseMsg decodes and validates an OP_MSG message (header included).
func ParseMsg(b []byte) (*Msg, error) {
	h, err := checkLength(b)
	if err != nil {
		return nil, err
	}
	if h.OpCode != OpMsg {
		return nil, fmt.Errorf("wire: op code %d is not OP_MSG", h.OpCode)
	}
	if len(b) < HeaderLen+4 {
		return nil, errors.New("wire: OP_MSG too short for flag bits")
	}
	m := &Msg{Header: h, Flags: binary.LittleEndian.Uint32(b[HeaderLen:])}
	if unknown := m.Flags & requiredBitsMask &^ knownRequired; unknown != 0 {
		return nil, fmt.Errorf("wire: OP_MSG has unknown required flag bits %#x", unknown)
	}
	end := len(b)
	if m.Flags&FlagChecksumPresent != 0 {
		if end < HeaderLen+4+4 {
			return nil, errors.New("wire: OP_MSG too short for its checksum")
		}
		end -= 4
		want := binary.LittleEndian.Uint32(b[end:])
		if got := crc32.Checksum(b[:end], castagnoli); got != want {
			return nil, fmt.Errorf("wire: OP_MSG checksum mismatch (got %#x, message says %#x)", got, want)
		}
	}
	p := b[HeaderLen+4 : end]
	for len(p) > 0 {
		kind := p[0]
		p = p[1:]
		switch kind {
		case 0:
			if m.Body != nil {
				return nil, errors.New("wire: OP_MSG has more than one body section")
			}
			n, err := docLen(p)
			if err != nil {
				return nil, fmt.Errorf("wire: OP_MSG body: %w", err)
			}
			if err := ValidateBSON(p[:n]); err != nil {
				return nil, fmt.Errorf("wire: OP_MSG body: %w", err)
			}
			m.Body = p[:n:n]
			p = p[n:]
		case 1:
			if len(p) < 4 {
				return nil, errors.New("wire: OP_MSG document sequence truncated before its size")
			}
			size := int(int32(binary.LittleEndian.Uint32(p)))
			if size < 4+1 || size > len(p) {
				return nil, fmt.Errorf("wire: OP_MSG document sequence size %d invalid (%d bytes left)", size, len(p))
			}
			sec := p[4:size]
			p = p[size:]
			id, rest, err := cstring(sec)
			if err != nil {
				return nil, fmt.Errorf("wire: OP_MSG document sequence identifier: %w", err)
			}
			seq := Sequence{Identifier: id}
			for len(rest) > 0 {
				n, err := docLen(rest)
				if err != nil {
					return nil, fmt.Errorf("wire: OP_MSG sequence %q document %d: %w", id, len(seq.Docs), err)
				}
				if err := ValidateBSON(rest[:n]); err != nil {
					return nil, fmt.Errorf("wire: OP_MSG sequence %q document %d: %w", id, len(seq.Docs), err)
				}
				seq.Docs = append(seq.Docs, rest[:n:n])
				rest = rest[n:]
			}
			m.Sequences = append(m.Sequences, seq)
		default:
			return nil, fmt.Errorf("wire: OP_MSG section kind %d is unknown", kind)
		}
	}
	if m.Body == nil {
		return nil, errors.New("wire: OP_MSG has no body section")
	}
	return m, nil
}

// docLen reads a BSON document length prefix and checks it fits in p.
func docLen(p []byte) (int, error) {
	if len(p) < 5 {
		return 0, fmt.Errorf("document truncated (%d bytes)", len(p))
	}
	n := int(int32(binary.LittleEndian.Uint32(p)))
	if n < 5 || n > len(p) {
		return 0, fmt.Errorf("document length %d invalid (%d bytes available)", n, len(p))
	}
	return n, nil
}

func cstring(p []byte) (string, []byte, error) {
	for i, c := range p {
		if c == 0 {
			return string(p[:i]), p[i+1:], nil
		}
	}
	return "", nil, errors.New("missing NUL terminator")
}

// AppendMsg encodes an OP_MSG with the given header fields (Length is
// computed). When flags has FlagChecksumPresent, the CRC-32C is appended.
func AppendMsg(dst []byte, requestID, responseTo int32, flags uint32, body []byte, seqs ...Sequence) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, HeaderLen+4)...)
	binary.LittleEndian.PutUint32(dst[start+HeaderLen:], flags)
	dst = append(dst, 0)
	dst = append(dst, body...)
	for _, s := range seqs {
		dst = append(dst, 1)
		sizeAt := len(dst)
		dst = append(dst, 0, 0, 0, 0)
		dst = append(dst, s.Identifier...)
		dst = append(dst, 0)
		for _, d := range s.Docs {
			dst = append(dst, d...)
		}
		binary.LittleEndian.PutUint32(dst[sizeAt:], uint32(len(dst)-sizeAt))
	}
	if flags&FlagChecksumPresent != 0 {
		dst = append(dst, 0, 0, 0, 0)
	}
	putHeader(dst[start:], Header{Length: int32(len(dst) - start), RequestID: requestID, ResponseTo: responseTo, OpCode: OpMsg})
	if flags&FlagChecksumPresent != 0 {
		end := len(dst) - 4
		binary.LittleEndian.PutUint32(dst[end:], crc32.Checksum(dst[start:end], castagnoli))
	}
	return dst
}

// Query is a decoded legacy OP_QUERY.
type Query struct {
	Header             Header
	Flags              int32
	FullCollectionName string
	NumberToSkip       int32
	NumberToReturn     int32
	Query              []byte
	ReturnFields       []byte // nil when absent
}

// ParseQuery decodes and validates an OP_QUERY message (header included).
func ParseQuery(b []byte) (*Query, error) {
	h, err := checkLength(b)
	if err != nil {
		return nil, err
	}
	if h.OpCode != OpQuery {
		return nil, fmt.Errorf("wire: op code %d is not OP_QUERY", h.OpCode)
	}
	p := b[HeaderLen:]
	if len(p) < 4 {
		return nil, errors.New("wire: OP_QUERY truncated before flags")
	}
	q := &Query{Header: h, Flags: int32(binary.LittleEndian.Uint32(p))}
	p = p[4:]
	if q.FullCollectionName, p, err = cstring(p); err != nil {
		return nil, fmt.Errorf("wire: OP_QUERY collection name: %w", err)
	}
	if len(p) < 8 {
		return nil, errors.New("wire: OP_QUERY truncated before numberToSkip/numberToReturn")
	}
	q.NumberToSkip = int32(binary.LittleEndian.Uint32(p))
	q.NumberToReturn = int32(binary.LittleEndian.Uint32(p[4:]))
	p = p[8:]
	n, err := docLen(p)
	if err != nil {
		return nil, fmt.Errorf("wire: OP_QUERY query: %w", err)
	}
	if err := ValidateBSON(p[:n]); err != nil {
		return nil, fmt.Errorf("wire: OP_QUERY query: %w", err)
	}
	q.Query = p[:n:n]
	p = p[n:]
	if len(p) > 0 {
		n, err := docLen(p)
		if err != nil {
			return nil, fmt.Errorf("wire: OP_QUERY returnFieldsSelector: %w", err)
		}
		if n != len(p) {
			return nil, fmt.Errorf("wire: OP_QUERY has %d trailing bytes", len(p)-n)
		}
		if err := ValidateBSON(p); err != nil {
			return nil, fmt.Errorf("wire: OP_QUERY returnFieldsSelector: %w", err)
		}
		q.ReturnFields = p
	}
	return q, nil
}

// AppendQuery encodes q (q.Header.Length and OpCode are computed).
func AppendQuery(dst []byte, q *Query) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, HeaderLen)...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(q.Flags))
	dst = append(dst, q.FullCollectionName...)
	dst = append(dst, 0)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(q.NumberToSkip))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(q.NumberToReturn))
	dst = append(dst, q.Query...)
	dst = append(dst, q.ReturnFields...)
	putHeader(dst[start:], Header{Length: int32(len(dst) - start), RequestID: q.Header.RequestID, ResponseTo: q.Header.ResponseTo, OpCode: OpQuery})
	return dst
}

// Reply is a decoded legacy OP_REPLY.
type Reply struct {
	Header       Header
	Flags        int32
	CursorID     int64
	StartingFrom int32
	Documents    [][]byte
}

// ParseReply decodes and validates an OP_REPLY message (header included).
func ParseReply(b []byte) (*Reply, error) {
	h, err := checkLength(b)
	if err != nil {
		return nil, err
	}
	if h.OpCode != OpReply {
		return nil, fmt.Errorf("wire: op code %d is not OP_REPLY", h.OpCode)
	}
	p := b[HeaderLen:]
	if len(p) < 20 {
		return nil, errors.New("wire: OP_REPLY truncated")
	}
	r := &Reply{
		Header:       h,
		Flags:        int32(binary.LittleEndian.Uint32(p)),
		CursorID:     int64(binary.LittleEndian.Uint64(p[4:])),
		StartingFrom: int32(binary.LittleEndian.Uint32(p[12:])),
	}
	count := int(int32(binary.LittleEndian.Uint32(p[16:])))
	p = p[20:]
	if count < 0 || count > len(p)/5 {
		return nil, fmt.Errorf("wire: OP_REPLY numberReturned %d impossible for %d bytes", count, len(p))
	}
	for i := 0; i < count; i++ {
		n, err := docLen(p)
		if err != nil {
			return nil, fmt.Errorf("wire: OP_REPLY document %d: %w", i, err)
		}
		if err := ValidateBSON(p[:n]); err != nil {
			return nil, fmt.Errorf("wire: OP_REPLY document %d: %w", i, err)
		}
		r.Documents = append(r.Documents, p[:n:n])
		p = p[n:]
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("wire: OP_REPLY has %d trailing bytes", len(p))
	}
	return r, nil
}

// AppendReply encodes r (Length and OpCode are computed).
func AppendReply(dst []byte, r *Reply) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, HeaderLen)...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(r.Flags))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(r.CursorID))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(r.StartingFrom))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(r.Documents)))
	for _, d := range r.Documents {
		dst = append(dst, d...)
	}
	putHeader(dst[start:], Header{Length: int32(len(dst) - start), RequestID: r.Header.RequestID, ResponseTo: r.Header.ResponseTo, OpCode: OpReply})
	return dst
}

// Message is any decoded message this package understands: *Msg, *Query or *Reply.
type Message interface{}

// Parse decodes one whole message by its op code. OP_COMPRESSED yields
// ErrCompressed; other op codes an error naming them.
func Parse(b []byte) (Message, error) {
	h, err := checkLength(b)
	if err != nil {
		return nil, err
	}
	switch h.OpCode {
	case OpMsg:
		return ParseMsg(b)
	case OpQuery:
		return ParseQuery(b)
	case OpReply:
		return ParseReply(b)
	case OpCompressed:
		return nil, ErrCompressed
	default:
		return nil, fmt.Errorf("wire: op code %d is not supported", h.OpCode)
	}
}
