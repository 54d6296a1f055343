package repl

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/hashicorp/serf/coordinate"
)

// TestUnitRelayAroundCut: a and b cannot reach each other, c reaches both.
// a's ops reach b through c (and b's reach a), in order, none twice;
// Status names the route; once the link heals the relays stop and the
// direct streams carry on from where the relays left.
func TestUnitRelayAroundCut(t *testing.T) {
	n := newFakeNet(t, "a", "b", "c")
	var cut atomic.Bool
	n.setDrop(func(from, to, topic string, msg []byte) bool {
		return cut.Load() && (from == "a" && to == "b" || from == "b" && to == "a")
	})
	a := newFakeNode(t, n, "a", true, nil)
	b := newFakeNode(t, n, "b", true, nil)
	c := newFakeNode(t, n, "c", true, nil)
	a.start(t)
	b.start(t)
	c.start(t)
	a.core.Write("app.c", 10)
	// Each must also have heard the other's heartbeat before the cut (ops
	// can arrive before the first heartbeat on a loaded machine): a node
	// never heard has no origin in Status, so no route to show.
	testkit.WaitFor(t, time.Minute, "b to apply a's first ops directly, a and b to hear each other", func() bool {
		return len(b.core.Remote("a")) == 10 && hasOrigin(b, "a") && hasOrigin(a, "b")
	})

	cut.Store(true)
	a.core.Write("app.c", 40) // right into the cut: in flight to b, lost
	b.core.Write("app.c", 5)
	testkit.WaitFor(t, time.Minute, "b to get a's ops through c", func() bool { return len(b.core.Remote("a")) == 50 })
	testkit.WaitFor(t, time.Minute, "a to get b's ops through c", func() bool { return len(a.core.Remote("b")) == 5 })
	if got := remoteSeqs(b, "a"); !appliedInOrder(got, 50) {
		t.Fatalf("b applied %v", got)
	}
	testkit.WaitFor(t, time.Minute, "b's status to show a's ops coming through c", func() bool {
		st := b.rep.Status()
		i := slices.IndexFunc(st.Origins, func(o OriginStatus) bool { return o.Node == "a" })
		return i >= 0 && st.Origins[i].Via == "c"
	})
	// The relay is re-planned with every heartbeat (a heartbeat late on a
	// loaded machine can pause it for a beat): poll.
	testkit.WaitFor(t, time.Minute, "c's status to show it relays a's ops to b", func() bool {
		st := c.rep.Status()
		i := slices.IndexFunc(st.Peers, func(p PeerStatus) bool { return p.Node == "b" })
		return i >= 0 && slices.Equal(st.Peers[i].Relaying, []string{"a"})
	})
	if got := counterValue(t, c.rep.met.opsRelayed.WithLabelValues("b")); got < 40 {
		t.Fatalf("c relayed %v ops to b", got)
	}
	// A steady stream while cut: each op arrives through c.
	for range 3 {
		a.core.Write("app.c", 1)
	}
	testkit.WaitFor(t, time.Minute, "b to get a's later ops through c", func() bool { return len(b.core.Remote("a")) == 53 })

	cut.Store(false)
	testkit.WaitFor(t, time.Minute, "the relays to stop once a and b hear each other", func() bool {
		for _, p := range c.rep.Status().Peers {
			if len(p.Relaying) > 0 {
				return false
			}
		}
		return true
	})
	a.core.Write("app.c", 7)
	testkit.WaitFor(t, time.Minute, "b to get a's ops directly again", func() bool { return len(b.core.Remote("a")) == 60 })
	if got := remoteSeqs(b, "a"); !appliedInOrder(got, 60) {
		t.Fatalf("b applied %v", got)
	}
	testkit.WaitFor(t, time.Minute, "b's status to show a direct", func() bool {
		st := b.rep.Status()
		i := slices.IndexFunc(st.Origins, func(o OriginStatus) bool { return o.Node == "a" })
		return i >= 0 && st.Origins[i].Via == ""
	})
	// c relayed only while needed: nobody relays in a whole cluster.
	if got := counterValue(t, a.rep.met.opsRelayed.WithLabelValues("b")) + counterValue(t, b.rep.met.opsRelayed.WithLabelValues("a")); got != 0 {
		t.Fatalf("a or b relayed %v ops", got)
	}
}

// TestUnitRelayNeverHeard: a and b are cut from the start, so b never
// hears a; a's ops reach it through c, and b's status still lists a, with
// the route.
func TestUnitRelayNeverHeard(t *testing.T) {
	n := newFakeNet(t, "a", "b", "c")
	n.setDrop(func(from, to, topic string, msg []byte) bool {
		return from == "a" && to == "b" || from == "b" && to == "a"
	})
	a := newFakeNode(t, n, "a", true, nil)
	b := newFakeNode(t, n, "b", true, nil)
	c := newFakeNode(t, n, "c", true, nil)
	a.start(t)
	b.start(t)
	c.start(t)
	a.core.Write("app.c", 10)
	testkit.WaitFor(t, time.Minute, "b to get a's ops through c, its status to show the route", func() bool {
		st := b.rep.Status()
		i := slices.IndexFunc(st.Origins, func(o OriginStatus) bool { return o.Node == "a" })
		return len(b.core.Remote("a")) == 10 && i >= 0 && st.Origins[i].Via == "c" && st.Origins[i].Applied == 10
	})
}

// TestUnitRelayOneWayCut: a's messages to b are lost (b's to a arrive):
// b cannot hear a, so c relays a's ops to b.
func TestUnitRelayOneWayCut(t *testing.T) {
	n := newFakeNet(t, "a", "b", "c")
	n.setDrop(func(from, to, topic string, msg []byte) bool { return from == "a" && to == "b" })
	a := newFakeNode(t, n, "a", true, nil)
	b := newFakeNode(t, n, "b", true, nil)
	c := newFakeNode(t, n, "c", true, nil)
	a.start(t)
	b.start(t)
	c.start(t)
	a.core.Write("app.c", 25)
	testkit.WaitFor(t, time.Minute, "b to get a's ops from c", func() bool { return len(b.core.Remote("a")) == 25 })
	if got := remoteSeqs(b, "a"); !appliedInOrder(got, 25) {
		t.Fatalf("b applied %v", got)
	}
}

// TestUnitRelayFromDeadOrigin: a's ops reached c, then a stopped for good
// before b came up. b gets them from c: no op is lost with its origin
// (before relays, b never got them). The same path gives a node whose
// data folder was wiped the ops of its old incarnation.
func TestUnitRelayFromDeadOrigin(t *testing.T) {
	n := newFakeNet(t, "a", "b", "c")
	a := newFakeNode(t, n, "a", true, nil)
	b := newFakeNode(t, n, "b", true, nil)
	c := newFakeNode(t, n, "c", true, nil)
	a.start(t)
	c.start(t)
	a.core.Write("app.c", 25)
	testkit.WaitFor(t, time.Minute, "c to apply a's ops", func() bool { return len(c.core.Remote("a")) == 25 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.rep.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	b.start(t)
	testkit.WaitFor(t, time.Minute, "b to get a's ops from c", func() bool { return len(b.core.Remote("a")) == 25 })
	if got := remoteSeqs(b, "a"); !appliedInOrder(got, 25) {
		t.Fatalf("b applied %v", got)
	}
}

// TestUnitRelayByCoordinates: the link between a and d fails; b and c hear
// both. By ID b would relay; by the network coordinates the path through c
// is much shorter (b is far from both), so c relays and b does not.
func TestUnitRelayByCoordinates(t *testing.T) {
	n := newFakeNet(t, "a", "b", "c", "d")
	at := map[string]float64{"a": 0, "b": 0.150, "c": 0.006, "d": 0.010} // seconds along one axis
	var nodes []nodemap.Node
	for _, id := range []string{"a", "b", "c", "d"} {
		c := coordinate.NewCoordinate(coordinate.DefaultConfig())
		c.Vec[0], c.Height = at[id], 0
		nodes = append(nodes, nodemap.Node{ID: id, State: nodemap.Alive, Coord: c})
	}
	n.pub.Publish(nodes)
	var cut atomic.Bool
	n.setDrop(func(from, to, topic string, msg []byte) bool {
		return cut.Load() && (from == "a" && to == "d" || from == "d" && to == "a")
	})
	var fn []*fakeNode
	for _, id := range []string{"a", "b", "c", "d"} {
		x := newFakeNode(t, n, id, true, nil)
		x.start(t)
		fn = append(fn, x)
	}
	a, b, c, d := fn[0], fn[1], fn[2], fn[3]
	a.core.Write("app.c", 5)
	testkit.WaitFor(t, time.Minute, "d to apply a's first ops directly and hear a", func() bool {
		return len(d.core.Remote("a")) == 5 && hasOrigin(d, "a")
	})
	cut.Store(true)
	a.core.Write("app.c", 20)
	total := 25
	t.Cleanup(func() {
		if t.Failed() {
			for _, x := range fn {
				t.Logf("%+v", x.rep.Status())
			}
		}
	})
	// Each node decides from the links and heartbeats it has heard, so for
	// a moment after the cut (longer on a loaded machine) b may not yet know
	// that c hears a, and relay too: that is allowed, and d skips what
	// arrives twice. The promise is where it settles. Keep a's ops coming
	// until d's route for a is c and c's status shows the relay.
	via := func() string {
		st := d.rep.Status()
		if i := slices.IndexFunc(st.Origins, func(o OriginStatus) bool { return o.Node == "a" }); i >= 0 {
			return st.Origins[i].Via
		}
		return ""
	}
	testkit.WaitFor(t, time.Minute, "d to get a's ops through c, and c to show it relays them", func() bool {
		st := c.rep.Status()
		i := slices.IndexFunc(st.Peers, func(p PeerStatus) bool { return p.Node == "d" })
		if via() == "c" && len(d.core.Remote("a")) == total && i >= 0 && slices.Equal(st.Peers[i].Relaying, []string{"a"}) {
			return true
		}
		a.core.Write("app.c", 1)
		total++
		return false
	})
	// Settled: b, the long way round, relays none of what comes next.
	bRelayed := counterValue(t, b.rep.met.opsRelayed.WithLabelValues("d"))
	a.core.Write("app.c", 10)
	total += 10
	testkit.WaitFor(t, time.Minute, "d to get a's next ops", func() bool { return len(d.core.Remote("a")) == total })
	if got := counterValue(t, b.rep.met.opsRelayed.WithLabelValues("d")); got != bRelayed || via() != "c" {
		t.Fatalf("after the route settled on c, b relayed %v more ops to d (route now via %q)", got-bRelayed, via())
	}
	if got := remoteSeqs(d, "a"); !appliedInOrder(got, total) {
		t.Fatalf("d applied %v", got)
	}
}

// hasOrigin reports whether n has heard node id's heartbeat (its origin is
// in n's Status).
func hasOrigin(n *fakeNode, id string) bool {
	return slices.ContainsFunc(n.rep.Status().Origins, func(o OriginStatus) bool { return o.Node == id })
}
