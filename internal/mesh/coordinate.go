package mesh

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/hashicorp/serf/coordinate"
)

// Network coordinates.
//
// Every node keeps a Vivaldi coordinate (github.com/hashicorp/serf/coordinate,
// the implementation Serf and Consul use) that places it so that the
// distance between two nodes' coordinates estimates their round trip time.
// It is fed exactly as Serf feeds it: memberlist's probes already time a
// round trip to one member per probe interval; the probed member puts its
// current coordinate in the ack (the ping delegate's AckPayload) and the
// prober updates its own coordinate with the pair (NotifyPingComplete).
//
// Every node gossips its coordinate in its metadata (field fCoord), so
// each node's map holds every node's coordinate, and the RTT between any
// two of them can be estimated, also between nodes that never probed each
// other. The gossiped copy is refreshed at most once per
// LoadUpdateInterval, and only when it moved enough to matter (see
// coordMoved), so metadata updates stay rare once the coordinates settle.

// coordDims is the dimensionality of every coordinate: a coordinate of
// another size is refused (DistanceTo panics on a mismatch).
const coordDims = 8

// coordWireLen is the encoded size: the vector, then error, adjustment and
// height, each a float32 (seconds; a float32's precision is far below a
// microsecond for any RTT on Earth).
const coordWireLen = (coordDims + 3) * 4

func coordConfig() *coordinate.Config {
	c := coordinate.DefaultConfig()
	c.Dimensionality = coordDims
	return c
}

func encodeCoord(c *coordinate.Coordinate) []byte {
	b := make([]byte, 0, coordWireLen)
	put := func(f float64) { b = binary.BigEndian.AppendUint32(b, math.Float32bits(float32(f))) }
	for i := range coordDims {
		v := 0.0
		if i < len(c.Vec) {
			v = c.Vec[i]
		}
		put(v)
	}
	put(c.Error)
	put(c.Adjustment)
	put(c.Height)
	return b
}

// maxCoordComponent bounds every component, in seconds: a coordinate
// farther out than this from the origin describes no network on Earth,
// only a bug or a forged message.
const maxCoordComponent = 60

func decodeCoord(b []byte) (*coordinate.Coordinate, error) {
	if len(b) != coordWireLen {
		return nil, fmt.Errorf("network coordinate: want %d bytes, got %d", coordWireLen, len(b))
	}
	f := make([]float64, coordDims+3)
	for i := range f {
		v := float64(math.Float32frombits(binary.BigEndian.Uint32(b[i*4:])))
		if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) > maxCoordComponent {
			return nil, errors.New("network coordinate: component not a finite number of seconds")
		}
		f[i] = v
	}
	c := &coordinate.Coordinate{Vec: f[:coordDims:coordDims], Error: f[coordDims], Adjustment: f[coordDims+1], Height: f[coordDims+2]}
	if c.Error < 0 || c.Height < 0 {
		return nil, errors.New("network coordinate: negative error or height")
	}
	return c, nil
}

// coordMoved reports whether the coordinate moved enough since it was last
// gossiped to be worth a metadata update: by more than a millisecond or
// more than a twentieth of the distance it has to the origin, whichever is
// larger.
func coordMoved(old, cur *coordinate.Coordinate) bool {
	if old == nil {
		return true
	}
	origin := coordinate.NewCoordinate(coordConfig())
	moved := old.DistanceTo(cur)
	return moved > max(time.Millisecond, cur.DistanceTo(origin)/20)
}

// coordPing is what the ping delegate does with a probe's round trip.
func (m *Mesh) coordPing(name string, rtt time.Duration, payload []byte) {
	if len(payload) == 0 {
		return // an older node: no coordinate in its acks
	}
	other, err := decodeCoord(payload)
	if err != nil {
		m.log.Debug("ignoring a probe ack's coordinate", "member", name, "err", err)
		return
	}
	if _, err := m.coord.Update(name, other, rtt); err != nil {
		m.log.Debug("coordinate update refused", "member", name, "rtt", rtt, "err", err)
		return
	}
	m.signal(m.coordCh)
}

// Coordinate returns this node's current network coordinate (a copy).
func (m *Mesh) Coordinate() *coordinate.Coordinate { return m.coord.GetCoordinate() }

func sameCoord(a, b *coordinate.Coordinate) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a == b || (a.Error == b.Error && a.Adjustment == b.Adjustment && a.Height == b.Height && slices.Equal(a.Vec, b.Vec))
}
