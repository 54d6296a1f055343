package mesh

import (
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/serf/coordinate"

	"github.com/edgenode/edgenode/internal/nodemap"
)

func sampleCoord() *coordinate.Coordinate {
	c := coordinate.NewCoordinate(coordConfig())
	for i := range c.Vec {
		c.Vec[i] = float64(i) * 0.001953125 // exact in a float32
	}
	c.Error, c.Adjustment, c.Height = 0.5, -0.0009765625, 0.0001220703125
	return c
}

// TestCoordCodec: a coordinate survives the wire; malformed ones are
// refused; a node that sends none (older versions) decodes as unknown.
func TestCoordCodec(t *testing.T) {
	c := sampleCoord()
	got, err := decodeCoord(encodeCoord(c))
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip: %+v %v, want %+v", got, err, c)
	}
	m := sampleMeta()
	m.Coord = c
	b, err := encodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	if dm, err := decodeMeta(b); err != nil || !reflect.DeepEqual(dm, m) {
		t.Fatalf("meta round trip: %+v %v", dm, err)
	}
	t.Logf("sample metadata with a coordinate: %d bytes", len(b))
	old, _ := encodeMeta(sampleMeta())
	if dm, err := decodeMeta(old); err != nil || dm.Coord != nil {
		t.Fatalf("metadata without a coordinate: %+v %v", dm, err)
	}
	bad := func(name string, b []byte) {
		t.Helper()
		if _, err := decodeCoord(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	good := encodeCoord(c)
	bad("short", good[:len(good)-1])
	bad("long", append(good[:len(good):len(good)], 0))
	for name, v := range map[string]float32{"nan": float32(math.NaN()), "inf": float32(math.Inf(1)), "huge": 1e6} {
		b := append([]byte(nil), good...)
		u := math.Float32bits(v)
		b[0], b[1], b[2], b[3] = byte(u>>24), byte(u>>16), byte(u>>8), byte(u)
		bad(name, b)
	}
	neg := sampleCoord()
	neg.Height = -1
	bad("negative height", encodeCoord(neg))
}

// TestCoordinatesGossiped: the probes' acks feed every node's coordinate
// and every node's map ends up holding every node's coordinate, with small
// RTT estimates on loopback.
func TestCoordinatesGossiped(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b", "c")
	for _, n := range nodes {
		waitMap(t, n, settle, n.opts.NodeID+" has coordinates of all 3", func(mp *nodemap.Map) bool {
			if len(mp.Nodes) != 3 {
				return false
			}
			for i := range mp.Nodes {
				if mp.Nodes[i].Coord == nil {
					return false
				}
			}
			return true
		})
	}
	mp, _ := nodes[0].Current()
	self, _ := mp.Node("a")
	for _, id := range []string{"b", "c"} {
		o, _ := mp.Node(id)
		rtt, ok := self.RTT(&o)
		if !ok || rtt < 0 || rtt > time.Second {
			t.Errorf("estimated RTT a-%s on loopback: %v %v", id, rtt, ok)
		}
	}
}
