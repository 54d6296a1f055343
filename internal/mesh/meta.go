package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/hashicorp/serf/coordinate"

	"github.com/edgenode/edgenode/internal/mesh/pki"
)

// MetaState is what a node says about itself.
type MetaState uint8

const (
	MetaAlive    MetaState = 1
	MetaDraining MetaState = 2
)

// Meta is a node's gossip metadata (memberlist NodeMeta).
type Meta struct {
	ID            string
	Region        string
	Lat, Lon      float64
	IPv4, IPv6    netip.Addr
	Tags          []string
	State         MetaState
	Load          float64
	BinaryVersion string
	ConfigVersion string
	// Link is the address peers dial for this node's QUIC links, and the
	// address its own connections come from.
	Link netip.AddrPort
	// Boot is random per process start. A changed Boot tells peers that the
	// node restarted, so they drop their link to the old process at once
	// instead of waiting for QUIC to notice.
	Boot uint64
	// NotReady says why the node is not ready (see nodemap.Node.Ready);
	// empty when it is. Nodes that predate the field never send it: they
	// count as ready, as they did.
	NotReady string
	// Protocol is the mesh protocol version the node speaks (see
	// Protocol). Nodes of version 1 never send the field: decoding gives
	// 1 when it is absent.
	Protocol int
	// Coord is the node's network coordinate (Vivaldi, see coordinate.go);
	// nil when the node sends none (older versions).
	Coord *coordinate.Coordinate
}

// Meta wire format, chosen to stay far below memberlist's 512-byte limit and
// to survive rolling upgrades:
//
//	version byte (1), then fields as: tag byte, uvarint length, value.
//
// Unknown tags are skipped, so a newer node may add fields that older nodes
// ignore. Known fields appear at most once, except tags.
const (
	metaVersion = 1
	// MetaMaxSize mirrors memberlist.MetaMaxSize.
	MetaMaxSize = 512

	fID            = 1
	fRegion        = 2
	fLocation      = 3 // int32 lat, int32 lon in micro-degrees, big endian
	fIPv4          = 4
	fIPv6          = 5
	fTag           = 6 // repeated
	fState         = 7
	fLoad          = 8 // float32 bits, big endian
	fBinaryVersion = 9
	fConfigVersion = 10
	fLink          = 11 // 4 or 16 address bytes, then port big endian
	fBoot          = 12 // uint64 big endian
	fNotReady      = 13 // why the node is not ready; absent when it is
	fProtocol      = 14 // uvarint mesh protocol version; absent: 1
	fCoord         = 15 // network coordinate, see encodeCoord; absent: unknown

	maxMetaString = 64
	maxTags       = 16

	// notReadyRoom is the length of not-ready reason every node's
	// metadata has room for: options are refused when a reason this long
	// would not fit, and a longer reason is shortened to what fits (see
	// encodeMetaFit).
	notReadyRoom = 16
)

var errMetaTooLarge = errors.New("node metadata exceeds 512 bytes; shorten tags, region or versions")

func encodeMeta(m Meta) ([]byte, error) {
	b := make([]byte, 0, 128)
	b = append(b, metaVersion)
	str := func(tag byte, s string) error {
		if s == "" {
			return nil
		}
		if len(s) > maxMetaString || !utf8.ValidString(s) {
			return fmt.Errorf("metadata field %d: %q is not valid UTF-8 of at most %d bytes", tag, s, maxMetaString)
		}
		b = append(b, tag)
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
		return nil
	}
	raw := func(tag byte, v []byte) {
		b = append(b, tag)
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	if err := str(fID, m.ID); err != nil {
		return nil, err
	}
	if err := str(fRegion, m.Region); err != nil {
		return nil, err
	}
	if m.Lat != 0 || m.Lon != 0 {
		var loc [8]byte
		binary.BigEndian.PutUint32(loc[0:], uint32(int32(math.Round(m.Lat*1e6))))
		binary.BigEndian.PutUint32(loc[4:], uint32(int32(math.Round(m.Lon*1e6))))
		raw(fLocation, loc[:])
	}
	if m.IPv4.IsValid() {
		a := m.IPv4.As4()
		raw(fIPv4, a[:])
	}
	if m.IPv6.IsValid() {
		a := m.IPv6.As16()
		raw(fIPv6, a[:])
	}
	if len(m.Tags) > maxTags {
		return nil, fmt.Errorf("%d tags; at most %d", len(m.Tags), maxTags)
	}
	for _, t := range m.Tags {
		if t == "" {
			return nil, errors.New("empty tag")
		}
		if err := str(fTag, t); err != nil {
			return nil, err
		}
	}
	raw(fState, []byte{byte(m.State)})
	if m.Load != 0 {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], math.Float32bits(float32(m.Load)))
		raw(fLoad, l[:])
	}
	if err := str(fBinaryVersion, m.BinaryVersion); err != nil {
		return nil, err
	}
	if err := str(fConfigVersion, m.ConfigVersion); err != nil {
		return nil, err
	}
	if m.Boot != 0 {
		raw(fBoot, binary.BigEndian.AppendUint64(nil, m.Boot))
	}
	if m.Link.IsValid() {
		a := m.Link.Addr().Unmap()
		v := a.AsSlice()
		v = binary.BigEndian.AppendUint16(v, m.Link.Port())
		raw(fLink, v)
	}
	if err := str(fNotReady, m.NotReady); err != nil {
		return nil, err
	}
	if m.Protocol > 1 {
		raw(fProtocol, binary.AppendUvarint(nil, uint64(m.Protocol)))
	}
	if m.Coord != nil {
		raw(fCoord, encodeCoord(m.Coord))
	}
	if len(b) > MetaMaxSize {
		return nil, errMetaTooLarge
	}
	return b, nil
}

// encodeMetaFit encodes m in at most limit bytes, shortening its
// not-ready reason to the room left by the other fields: the reason is
// for people, the fact that there is one is what DNS needs.
func encodeMetaFit(m Meta, limit int) ([]byte, error) {
	m.NotReady = clipUTF8(m.NotReady, maxMetaString)
	b, err := encodeMeta(m)
	if m.NotReady == "" || (err == nil && len(b) <= limit) || (err != nil && !errors.Is(err, errMetaTooLarge)) {
		return b, err
	}
	reason := m.NotReady
	m.NotReady = ""
	base, err := encodeMeta(m)
	if err != nil {
		return nil, err
	}
	room := min(limit, MetaMaxSize) - len(base) - 2 // tag and a one-byte length
	if room < 1 {
		return nil, errMetaTooLarge
	}
	m.NotReady = clipUTF8(reason, room)
	return encodeMeta(m)
}

// clipUTF8 makes s valid UTF-8 of at most n bytes without splitting a
// character. A non-empty s stays non-empty: an empty reason would say
// "ready".
func clipUTF8(s string, n int) string {
	if s == "" {
		return ""
	}
	s = strings.ToValidUTF8(s, "?")
	if len(s) > n {
		i := n
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = s[:i]
	}
	if s == "" {
		return "?"
	}
	return s
}

// decodeMeta parses metadata gossiped by another node. The bytes come from
// the network (authenticated by the gossip key, but from any cluster member
// and possibly a newer version), so every field is checked.
func decodeMeta(b []byte) (Meta, error) {
	var m Meta
	if len(b) == 0 {
		return m, errors.New("empty metadata")
	}
	if len(b) > MetaMaxSize {
		return m, errMetaTooLarge
	}
	if b[0] != metaVersion {
		return m, fmt.Errorf("metadata version %d not supported", b[0])
	}
	b = b[1:]
	var seen uint64
	for len(b) > 0 {
		tag := b[0]
		n, k := binary.Uvarint(b[1:])
		if k <= 0 || n > uint64(len(b)-1-k) {
			return Meta{}, fmt.Errorf("metadata field %d: bad length", tag)
		}
		v := b[1+k : 1+k+int(n)]
		b = b[1+k+int(n):]
		if tag != fTag && tag < 64 {
			if seen&(1<<tag) != 0 {
				return Meta{}, fmt.Errorf("metadata field %d repeated", tag)
			}
			seen |= 1 << tag
		}
		str := func() (string, error) {
			if len(v) > maxMetaString || !utf8.Valid(v) {
				return "", fmt.Errorf("metadata field %d: not valid UTF-8 of at most %d bytes", tag, maxMetaString)
			}
			return string(v), nil
		}
		var err error
		switch tag {
		case fID:
			m.ID, err = str()
		case fRegion:
			m.Region, err = str()
		case fLocation:
			if len(v) != 8 {
				return Meta{}, errors.New("metadata location: want 8 bytes")
			}
			m.Lat = float64(int32(binary.BigEndian.Uint32(v[0:]))) / 1e6
			m.Lon = float64(int32(binary.BigEndian.Uint32(v[4:]))) / 1e6
			if m.Lat < -90 || m.Lat > 90 || m.Lon < -180 || m.Lon > 180 {
				return Meta{}, fmt.Errorf("metadata location %v,%v out of range", m.Lat, m.Lon)
			}
		case fIPv4:
			if len(v) != 4 {
				return Meta{}, errors.New("metadata IPv4: want 4 bytes")
			}
			m.IPv4 = netip.AddrFrom4([4]byte(v))
		case fIPv6:
			if len(v) != 16 {
				return Meta{}, errors.New("metadata IPv6: want 16 bytes")
			}
			m.IPv6 = netip.AddrFrom16([16]byte(v))
		case fTag:
			if len(m.Tags) >= maxTags {
				return Meta{}, fmt.Errorf("metadata: more than %d tags", maxTags)
			}
			var t string
			if t, err = str(); err == nil && t == "" {
				err = errors.New("metadata: empty tag")
			}
			m.Tags = append(m.Tags, t)
		case fState:
			if len(v) != 1 || v[0] < byte(MetaAlive) || v[0] > byte(MetaLeaving) {
				return Meta{}, errors.New("metadata state: unknown value")
			}
			m.State = MetaState(v[0])
		case fLoad:
			if len(v) != 4 {
				return Meta{}, errors.New("metadata load: want 4 bytes")
			}
			l := float64(math.Float32frombits(binary.BigEndian.Uint32(v)))
			if math.IsNaN(l) || math.IsInf(l, 0) || l < 0 {
				return Meta{}, fmt.Errorf("metadata load %v not a finite non-negative number", l)
			}
			m.Load = l
		case fBinaryVersion:
			m.BinaryVersion, err = str()
		case fConfigVersion:
			m.ConfigVersion, err = str()
		case fBoot:
			if len(v) != 8 {
				return Meta{}, errors.New("metadata boot id: want 8 bytes")
			}
			m.Boot = binary.BigEndian.Uint64(v)
		case fNotReady:
			if m.NotReady, err = str(); err == nil && m.NotReady == "" {
				err = errors.New("metadata: empty not-ready reason")
			}
		case fProtocol:
			p, k := binary.Uvarint(v)
			if k != len(v) || p < 2 || p > math.MaxUint16 {
				return Meta{}, errors.New("metadata protocol version: want a uvarint from 2 to 65535")
			}
			m.Protocol = int(p)
		case fCoord:
			c, cerr := decodeCoord(v)
			if cerr != nil {
				return Meta{}, fmt.Errorf("metadata: %w", cerr)
			}
			m.Coord = c
		case fLink:
			if len(v) != 6 && len(v) != 18 {
				return Meta{}, errors.New("metadata link address: want 6 or 18 bytes")
			}
			a, _ := netip.AddrFromSlice(v[:len(v)-2])
			m.Link = netip.AddrPortFrom(a.Unmap(), binary.BigEndian.Uint16(v[len(v)-2:]))
			if m.Link.Port() == 0 || a.IsUnspecified() {
				return Meta{}, fmt.Errorf("metadata link address %v not dialable", m.Link)
			}
		default:
			// A field from a newer version: skip it.
		}
		if err != nil {
			return Meta{}, err
		}
	}
	if err := pki.ValidNodeID(m.ID); err != nil {
		return Meta{}, fmt.Errorf("metadata: %w", err)
	}
	if m.State == 0 {
		return Meta{}, errors.New("metadata: no state")
	}
	if !m.Link.IsValid() {
		return Meta{}, errors.New("metadata: no link address")
	}
	if m.Protocol == 0 {
		m.Protocol = 1 // a node from before versions were gossiped
	}
	return m, nil
}
