package rum

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"

	"github.com/edgenode/edgenode/internal/mesh/pki"
)

// Digest wire format (all from a mesh peer, authenticated by its link, but
// checked field by field all the same):
//
//	version byte (1), uvarint network count, then per network:
//	  family byte (4 or 6), the network's 3 (/24) or 6 (/48) address bytes,
//	  node count byte (1..MaxNodesPerNetwork), then per node:
//	    id length byte, id, bucket count byte, then per non-empty bucket:
//	      bucket index byte, weight float32 big endian (finite, > 0).
//
// Only non-empty buckets travel: a network measured from one place fills
// two or three of its 40 buckets, so a node takes about 25 bytes.
const (
	digestVersion = 1
	// maxDigestBytes keeps a digest well below the mesh's message limit.
	maxDigestBytes = 4 << 20
	// maxWeight bounds one bucket's weight in a digest: far above what a
	// network's real traffic gives within a half-life, low enough that a
	// bogus figure cannot drown every other.
	maxWeight = 1e6
)

type digestNet struct {
	p     netip.Prefix
	nodes []nodeSketch
}

func encodeDigest(nets []digestNet) []byte {
	var body []byte
	n := 0
	for _, dn := range nets {
		var e []byte
		a := dn.p.Addr()
		if a.Is4() {
			a4 := a.As4()
			e = append(e, 4, a4[0], a4[1], a4[2])
		} else {
			a16 := a.As16()
			e = append(append(e, 6), a16[:6]...)
		}
		e = append(e, byte(len(dn.nodes)))
		for _, ns := range dn.nodes {
			e = append(e, byte(len(ns.id)))
			e = append(e, ns.id...)
			cnt := 0
			for _, w := range ns.s.w {
				if w > 0 {
					cnt++
				}
			}
			e = append(e, byte(cnt))
			for i, w := range ns.s.w {
				if w > 0 {
					e = append(e, byte(i))
					e = binary.BigEndian.AppendUint32(e, math.Float32bits(min(w, maxWeight)))
				}
			}
		}
		if len(body)+len(e)+binary.MaxVarintLen64 > maxDigestBytes {
			break
		}
		body = append(body, e...)
		n++
	}
	out := binary.AppendUvarint([]byte{digestVersion}, uint64(n))
	return append(out, body...)
}

func decodeDigest(b []byte, maxNets int) (map[netip.Prefix]*network, error) {
	if len(b) == 0 || b[0] != digestVersion {
		return nil, errors.New("rum digest: unknown version")
	}
	if len(b) > maxDigestBytes {
		return nil, errors.New("rum digest: too large")
	}
	b = b[1:]
	count, k := binary.Uvarint(b)
	if k <= 0 || count > uint64(maxNets) {
		return nil, fmt.Errorf("rum digest: network count not within 0..%d", maxNets)
	}
	b = b[k:]
	take := func(n int) ([]byte, error) {
		if n > len(b) {
			return nil, errors.New("rum digest: truncated")
		}
		v := b[:n]
		b = b[n:]
		return v, nil
	}
	out := make(map[netip.Prefix]*network, count)
	for range count {
		fam, err := take(1)
		if err != nil {
			return nil, err
		}
		var p netip.Prefix
		switch fam[0] {
		case 4:
			v, err := take(3)
			if err != nil {
				return nil, err
			}
			p = netip.PrefixFrom(netip.AddrFrom4([4]byte{v[0], v[1], v[2], 0}), 24)
		case 6:
			v, err := take(6)
			if err != nil {
				return nil, err
			}
			var a [16]byte
			copy(a[:], v)
			p = netip.PrefixFrom(netip.AddrFrom16(a), 48)
		default:
			return nil, errors.New("rum digest: unknown address family")
		}
		if _, dup := out[p]; dup {
			return nil, fmt.Errorf("rum digest: network %v twice", p)
		}
		nn, err := take(1)
		if err != nil {
			return nil, err
		}
		if nn[0] == 0 || int(nn[0]) > MaxNodesPerNetwork {
			return nil, fmt.Errorf("rum digest: %d nodes in a network; want 1..%d", nn[0], MaxNodesPerNetwork)
		}
		n := &network{nodes: make([]nodeSketch, 0, nn[0])}
		for range int(nn[0]) {
			l, err := take(1)
			if err != nil {
				return nil, err
			}
			id, err := take(int(l[0]))
			if err != nil {
				return nil, err
			}
			if err := pki.ValidNodeID(string(id)); err != nil {
				return nil, fmt.Errorf("rum digest: %w", err)
			}
			ns := nodeSketch{id: string(id)}
			for _, o := range n.nodes {
				if o.id == ns.id {
					return nil, fmt.Errorf("rum digest: node %q twice in %v", ns.id, p)
				}
			}
			bc, err := take(1)
			if err != nil {
				return nil, err
			}
			if bc[0] > numBuckets {
				return nil, errors.New("rum digest: too many buckets")
			}
			for range int(bc[0]) {
				v, err := take(5)
				if err != nil {
					return nil, err
				}
				w := math.Float32frombits(binary.BigEndian.Uint32(v[1:]))
				if v[0] >= numBuckets || ns.s.w[v[0]] != 0 || !(w > 0 && w <= maxWeight) {
					return nil, errors.New("rum digest: bad bucket")
				}
				ns.s.w[v[0]] = w
			}
			n.nodes = append(n.nodes, ns)
		}
		out[p] = n
	}
	if len(b) != 0 {
		return nil, errors.New("rum digest: trailing bytes")
	}
	return out, nil
}
