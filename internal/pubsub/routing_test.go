package pubsub

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/serf/coordinate"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
)

// streamOf is the one stream of a position made on the node that
// published every message of it.
func streamOf(t *testing.T, pos Position) uint64 {
	t.Helper()
	v, _, _, ok := parseToken(pos.Epoch)
	if !ok || len(v) != 1 {
		t.Fatalf("position %+v: want one stream", pos)
	}
	return v[0].sid
}

// seqIn is the sequence number of stream sid in position pos.
func seqIn(t *testing.T, pos *Position, sid uint64) uint64 {
	t.Helper()
	v, _, _, ok := parseToken(pos.Epoch)
	if !ok {
		t.Fatalf("bad position %+v", pos)
	}
	return v.get(sid)
}

// expectData reads the next message and checks its data.
func (c *wsClient) expectData(want string) frame {
	c.t.Helper()
	m := c.expect(typeMessage)
	if string(m.Data) != want {
		c.t.Fatalf("got %s, want %s", m.Data, want)
	}
	return m
}

// A publish goes only to the peers with subscribers on its channel: with
// subscribers on 2 of 5 nodes, a publish on a third is sent to those 2,
// and the others receive nothing of it.
func TestInterestRouting(t *testing.T) {
	nodes, meshes := newTestCluster(t, 5, clusterOptions())
	waitDirect(t, nodes, meshes)
	const ch = "demo/thread-interest"
	s2 := nodes[1].mustDial()
	s2.subscribe(ch, "", nil)
	s3 := nodes[2].mustDial()
	s3.subscribe(ch, "", nil)
	// Every node but n2 and n3 follows another channel, the marker.
	var markers []*wsClient
	for _, i := range []int{0, 3, 4} {
		c := nodes[i].mustDial()
		c.subscribe("demo/thread-marker", "", nil)
		markers = append(markers, c)
	}
	const m = 50
	for i := 1; i <= m; i++ {
		nodes[0].publish(ch, i)
	}
	for i := 1; i <= m; i++ {
		s2.expectData(strconv.Itoa(i))
		s3.expectData(strconv.Itoa(i))
	}
	// The marker, published on n1 after them, reaching n4 and n5 means
	// anything n1 sent them before has arrived (one ordered stream per
	// topic and pair).
	nodes[0].publish("demo/thread-marker", "end")
	for _, c := range markers {
		c.expectData(`"end"`)
	}
	for _, peer := range []string{"n2", "n3"} {
		if got := sent(nodes[0], peer, "direct") + sent(nodes[0], peer, "relay"); got != m {
			t.Errorf("n1 sent %v messages to %s, want %d", got, peer, m)
		}
	}
	for _, i := range []int{3, 4} {
		if got := sent(nodes[0], meshes[i].self, "direct") + sent(nodes[0], meshes[i].self, "relay"); got != 1 {
			t.Errorf("n1 sent %v messages to %s, want only the marker", got, meshes[i].self)
		}
		if got := testutil.ToFloat64(nodes[i].ps.met.peerReceived.WithLabelValues("unwanted")); got != 0 {
			t.Errorf("%s received %v messages of a channel it does not follow", meshes[i].self, got)
		}
	}

	// When n3's subscriber leaves, n3 stops following: later publishes go
	// to n2 only.
	s3.send(map[string]any{"type": "unsubscribe", "channel": ch})
	s3.expect(typeUnsubscribed)
	testkit.WaitFor(t, settle, "n1 to learn n3 left", func() bool {
		nodes[0].ps.cl.mu.RLock()
		defer nodes[0].ps.cl.mu.RUnlock()
		_, ok := nodes[0].ps.cl.peers["n3"].interest[channelHash(ch)]
		return !ok
	})
	nodes[0].publish(ch, "after")
	s2.expectData(`"after"`)
	if got := sent(nodes[0], "n3", "direct") + sent(nodes[0], "n3", "relay"); got != m {
		t.Errorf("n1 sent %v to n3 after it left, want still %d", got, m)
	}
}

// A subscriber gets every message after its "subscribed" position, also
// when it subscribes while messages are being published and its node did
// not follow the channel yet (the interest has to reach the publisher).
func TestSubscribeWhilePublishing(t *testing.T) {
	nodes, meshes := newTestCluster(t, 4, clusterOptions())
	waitDirect(t, nodes, meshes)
	const ch = "demo/thread-busy"
	const total = 400
	first := nodes[0].publish(ch, 0) // the channel's stream on n1 starts: seq = data + 1
	sid := streamOf(t, first)

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; i < total; i++ {
			if _, err := nodes[0].ps.Publish(ch, json.RawMessage(strconv.Itoa(i))); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for k := 0; k < 9; k++ {
		n := nodes[1+k%3]
		c := n.mustDial()
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			time.Sleep(time.Duration(k) * 40 * time.Millisecond)
			c.send(map[string]any{"type": "subscribe", "channel": ch})
			f, err := c.read()
			if err != nil || f.Type != typeSubscribed {
				errs <- fmt.Errorf("subscriber %d: %+v %v", k, f, err)
				return
			}
			next := seqIn(t, f.Position, sid) + 1 // the first message it is owed
			for next <= total {
				m, err := c.read()
				if err != nil {
					errs <- fmt.Errorf("subscriber %d waiting for seq %d: %v", k, next, err)
					return
				}
				if m.Type != typeMessage || string(m.Data) != strconv.FormatUint(next-1, 10) || seqIn(t, m.Position, sid) != next {
					errs <- fmt.Errorf("subscriber %d: got %+v %s, want seq %d", k, m, m.Data, next)
					return
				}
				next++
			}
		}(k)
	}
	<-done
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Around a cut between two nodes (n1 and n2), messages go through the
// third, which reaches both: a subscriber on n2 gets every message
// published on n1, once, in order, also those sent into the cut before it
// was noticed and those that arrive late when it heals.
func TestRelayAroundCut(t *testing.T) {
	nodes, meshes := newTestCluster(t, 3, clusterOptions())
	waitDirect(t, nodes, meshes)
	const ch = "demo/thread-cut"
	sub := nodes[1].mustDial()
	sub.subscribe(ch, "", nil)
	nodes[0].publish(ch, 1)
	sub.expectData("1")

	meshes[0].cut("n2", true)
	meshes[1].cut("n1", true)
	nodes[0].publish(ch, 2) // into the cut, before it is noticed
	testkit.WaitFor(t, settle, "n1 and n2 to see their direct path down", func() bool {
		return !nodes[0].direct("n2") && !nodes[1].direct("n1")
	})
	for i := 3; i <= 5; i++ {
		nodes[0].publish(ch, i)
	}
	for i := 2; i <= 5; i++ {
		sub.expectData(strconv.Itoa(i))
	}
	if got := sent(nodes[0], "n2", "relay"); got != 3 {
		t.Errorf("n1 counted %v messages relayed to n2, want 3", got)
	}
	if got := testutil.ToFloat64(nodes[2].ps.met.relayed); got < 4 {
		t.Errorf("n3 relayed %v messages, want at least 4 (the resent one and three)", got)
	}
	// A subscriber that joins n2 during the cut (a fetch of n1's stream
	// through n3) and resumes there.
	late := nodes[1].mustDial()
	late.subscribe(ch, "", nil)

	// Heal: what was held in the cut arrives late and is dropped as a
	// duplicate; direct paths come back.
	meshes[0].cut("n2", false)
	meshes[1].cut("n1", false)
	testkit.WaitFor(t, settle, "direct paths back", func() bool { return nodes[0].direct("n2") && nodes[1].direct("n1") })
	for i := 6; i <= 8; i++ {
		nodes[0].publish(ch, i)
	}
	for i := 6; i <= 8; i++ {
		sub.expectData(strconv.Itoa(i))
		late.expectData(strconv.Itoa(i))
	}
	testkit.WaitFor(t, settle, "the held message dropped as a duplicate", func() bool {
		return testutil.ToFloat64(nodes[1].ps.met.peerReceived.WithLabelValues("duplicate")) >= 1
	})
	// Nothing else is waiting: a ping round trip comes back first.
	sub.sync()
	late.sync()
}

// Around a cut between n1 and n4, where n2 and n3 both reach both, the
// relay is the one on the shortest path by network coordinates: n2 (near
// both), not n3 (far from both), which a hash of the target picks without
// coordinates.
func TestRelayByCoordinates(t *testing.T) {
	nodes, meshes := newTestCluster(t, 4, clusterOptions())
	at := map[string]float64{"n1": 0, "n2": 0.005, "n3": 0.200, "n4": 0.010} // seconds along one axis
	coords := map[string]*coordinate.Coordinate{}
	for id, x := range at {
		c := coordinate.NewCoordinate(coordinate.DefaultConfig())
		c.Vec[0], c.Height = x, 0
		coords[id] = c
	}
	for _, m := range meshes {
		m.setCoords(coords)
	}
	waitDirect(t, nodes, meshes)
	const ch = "demo/thread-coords"
	sub := nodes[3].mustDial()
	sub.subscribe(ch, "", nil)
	nodes[0].publish(ch, 1)
	sub.expectData("1")
	meshes[0].cut("n4", true, true)
	meshes[3].cut("n1", true, true)
	testkit.WaitFor(t, settle, "n1 and n4 to see their direct path down", func() bool {
		return !nodes[0].direct("n4") && !nodes[3].direct("n1")
	})
	// The choice itself, taken while both n2 and n3 are candidates (a
	// heartbeat late on a loaded machine can leave only one for a beat,
	// and then the traffic rightly goes through the other: counting who
	// relayed what would be flaky).
	var cands, via []string
	testkit.WaitFor(t, settle, "n1 to relay to n4 through n2 with both n2 and n3 candidates", func() bool {
		cands, via = nodes[0].relayChoice("n4")
		return len(cands) == 2 && slices.Equal(via, []string{"n2"})
	})
	for i := 2; i <= 4; i++ {
		nodes[0].publish(ch, i)
		sub.expectData(strconv.Itoa(i))
	}
	if got := testutil.ToFloat64(nodes[1].ps.met.relayed); got < 1 {
		t.Errorf("n2 (the short way) relayed %v messages", got)
	}
}

// A subscriber whose node goes away resumes on another node with its last
// position and gets exactly what was published meanwhile, whether the new
// node followed the channel already or not.
func TestResumeOnAnotherNode(t *testing.T) {
	for _, following := range []bool{false, true} {
		t.Run(fmt.Sprintf("following=%v", following), func(t *testing.T) {
			opts := clusterOptions()
			opts.SyncTimeout = 500 * time.Millisecond // the gone node never answers
			nodes, meshes := newTestCluster(t, 3, opts)
			waitDirect(t, nodes, meshes)
			const ch = "demo/thread-resume"
			if following {
				other := nodes[2].mustDial()
				other.subscribe(ch, "", nil)
			}
			c := nodes[1].mustDial()
			c.subscribe(ch, "", nil)
			var last Position
			for i := 1; i <= 3; i++ {
				nodes[0].publish(ch, i)
				last = *c.expectData(strconv.Itoa(i)).Position
			}
			// n2 goes away for good.
			nodes[1].close()
			meshes[1].close()
			for i := 4; i <= 7; i++ {
				nodes[0].publish(ch, i)
			}
			c = nodes[2].mustDial()
			s := c.subscribe(ch, "", &last)
			// A node that did not follow the channel fetches what the
			// client missed before answering, so it recovers all four. One
			// that follows it may not have received all of them yet: it
			// recovers what it has and the rest comes live, in order.
			want := func(n int) bool { return n == 4 }
			if following {
				want = func(n int) bool { return n <= 4 }
			}
			if s.Recovered == nil || !want(*s.Recovered) || s.Position.Offset != uint64(3+*s.Recovered) {
				rec := "none"
				if s.Recovered != nil {
					rec = strconv.Itoa(*s.Recovered)
				}
				t.Fatalf("subscribed: recovered %s, position %+v", rec, s.Position)
			}
			for i := 4; i <= 7; i++ {
				if m := c.expectData(strconv.Itoa(i)); m.Position.Offset != uint64(i) {
					t.Fatalf("replayed %+v", m)
				}
			}
			nodes[0].publish(ch, 8)
			c.expectData("8")
			if got := testutil.ToFloat64(nodes[2].ps.met.recoveries.WithLabelValues("must_reload")); got != 0 {
				t.Fatalf("must_reload counted %v", got)
			}
		})
	}
}

// An EventSource's Last-Event-ID from one node resumes on another.
func TestSSEResumeOnAnotherNode(t *testing.T) {
	nodes, meshes := newTestCluster(t, 2, clusterOptions())
	waitDirect(t, nodes, meshes)
	s, _ := nodes[0].sse("channel=demo/thread-sse", nil)
	s.expect(typeSubscribed)
	nodes[0].publish("demo/thread-sse", 1)
	_, ev := s.expect(typeMessage)
	s.resp.Body.Close()
	nodes[0].publish("demo/thread-sse", 2)
	nodes[0].publish("demo/thread-sse", 3)
	s, _ = nodes[1].sse("channel=demo/thread-sse", map[string][]string{"Last-Event-ID": {ev.id}})
	if f, _ := s.expect(typeSubscribed); f.Recovered == nil || *f.Recovered != 2 {
		t.Fatalf("subscribed %+v", f)
	}
	for i := 2; i <= 3; i++ {
		if f, _ := s.expect(typeMessage); string(f.Data) != strconv.Itoa(i) {
			t.Fatalf("replayed %s", f.Data)
		}
	}
}

// A message lost between two nodes (no relay: there are only two) is
// repaired from the publisher's history when a later one shows the gap,
// or when the periodic digest shows the publisher is ahead; messages the
// publisher no longer has end in must_reload, then the stream goes on.
func TestGapRepair(t *testing.T) {
	opts := clusterOptions()
	opts.DigestInterval = 300 * time.Millisecond
	opts.History = 3
	nodes, meshes := newTestCluster(t, 2, opts)
	waitDirect(t, nodes, meshes)
	const ch = "demo/thread-gap"
	sub := nodes[1].mustDial()
	sub.subscribe(ch, "", nil)
	nodes[0].publish(ch, 1)
	sub.expectData("1")

	lose := func(f func()) {
		meshes[0].cut("n2", true)
		f()
		meshes[0].cut("n2", false, true) // lost, not late
	}
	// A later message shows the gap.
	lose(func() { nodes[0].publish(ch, 2) })
	nodes[0].publish(ch, 3)
	sub.expectData("2")
	sub.expectData("3")
	// Nothing later: the digest's heads show it.
	lose(func() { nodes[0].publish(ch, 4) })
	sub.expectData("4")
	testkit.WaitFor(t, settle, "repairs counted", func() bool {
		return testutil.ToFloat64(nodes[1].ps.met.gaps.WithLabelValues("repaired")) >= 2
	})
	// More lost than n1's history holds (3): n2's subscriber is told to
	// reload, then gets what n1 still has, and the stream goes on.
	lose(func() {
		for i := 5; i <= 9; i++ {
			nodes[0].publish(ch, i)
		}
	})
	nodes[0].publish(ch, 10)
	sub.expect(typeError, codeMustReload)
	for i := 8; i <= 10; i++ {
		sub.expectData(strconv.Itoa(i))
	}
	if got := testutil.ToFloat64(nodes[1].ps.met.gaps.WithLabelValues("lost")); got != 1 {
		t.Errorf("lost gaps %v", got)
	}
	nodes[0].publish(ch, 11)
	sub.expectData("11")
}

// A node from before interest routing (it broadcasts messages in the old
// form and sends no heartbeats) still exchanges messages with new ones
// during a rolling upgrade.
func TestOldNodeInTheCluster(t *testing.T) {
	ma, mold := newTCPMesh(t, "n1"), newTCPMesh(t, "old")
	defer mold.close()
	defer ma.close()
	ma.join(mold)
	mold.join(ma)
	got := make(chan []byte, 16)
	mold.Handle(MeshTopic, func(from string, msg []byte) { got <- msg })
	a := newNode(t, clusterOptions(), ma)
	sub := a.mustDial()
	sub.subscribe("demo/thread-old", "", nil)

	// Old to new: delivered.
	mold.Broadcast(MeshTopic, encodeLegacy("demo/thread-old", []byte(`"from old"`)))
	sub.expectData(`"from old"`)
	// New to old: once the old node has been seen long enough without a
	// heartbeat, publishes go to it in the old form.
	deadline := time.After(settle)
	for i := 0; ; i++ {
		a.publish("demo/thread-old", i)
		sub.expectData(strconv.Itoa(i))
		select {
		case msg := <-got:
			ch, data, err := decodeLegacy(msg)
			if err != nil || ch != "demo/thread-old" || string(data) != strconv.Itoa(i) {
				t.Fatalf("old node got %q: %v", msg, err)
			}
			return
		case <-deadline:
			t.Fatal("the old node never got a publish")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// A node that begins following a channel while its publisher cannot be
// reached at all learns of the publisher's stream once the partition
// heals (from the digest's heads), and delivers what was published after
// it began following, not what was published before.
func TestFollowWhilePublisherUnreachable(t *testing.T) {
	opts := clusterOptions()
	opts.DigestInterval = 300 * time.Millisecond
	nodes, meshes := newTestCluster(t, 2, opts)
	waitDirect(t, nodes, meshes)
	const ch = "demo/thread-partition"
	meshes[0].cut("n2", true)
	meshes[1].cut("n1", true)
	testkit.WaitFor(t, settle, "both sides to see the partition", func() bool {
		return !nodes[0].direct("n2") && !nodes[1].direct("n1")
	})
	testkit.WaitFor(t, settle, "n2 to stop counting n1 as reachable", func() bool {
		return !nodes[1].ps.cl.routable("n1", time.Now())
	})
	nodes[0].publish(ch, "before")
	time.Sleep(5 * time.Millisecond) // a later millisecond: the origin's clock orders the two
	sub := nodes[1].mustDial()
	if s := sub.subscribe(ch, "", nil); s.Position.Offset != 0 {
		t.Fatalf("subscribed %+v", s)
	}
	time.Sleep(5 * time.Millisecond)
	nodes[0].publish(ch, "after")
	meshes[0].cut("n2", false, true)
	meshes[1].cut("n1", false, true)
	sub.expectData(`"after"`)
	nodes[0].publish(ch, "live")
	sub.expectData(`"live"`)
	sub.sync()
}

// A digest made before a follow began never undoes it; what no digest
// names for three intervals (a lost "no longer") is forgotten.
func TestInterestRefreshAndExpiry(t *testing.T) {
	m := newTCPMesh(t, "n1")
	defer m.close()
	n := newNode(t, clusterOptions(), m)
	cl := n.ps.cl
	follows := func(h uint64) bool {
		cl.mu.RLock()
		defer cl.mu.RUnlock()
		_, ok := cl.peers["n2"].interest[h]
		return ok
	}
	cl.register("n2", 1)
	cl.onDigest("n2", digest{parts: 1, hashes: []uint64{2}}) // made before 1 was followed
	if !follows(1) || !follows(2) {
		t.Fatal("a digest removed or missed a follow")
	}
	cl.onInterest("n2", []interestOp{{1, false}})
	if follows(1) {
		t.Fatal("still following after no longer")
	}
	cl.expireInterest(time.Now().Add(3*n.ps.opts.DigestInterval + time.Second))
	if follows(2) {
		t.Fatal("not forgotten after three digests without it")
	}
}

// A node dies (here: cut off from everyone, still in the map) just as a
// channel's first subscriber arrives on another node: the sync round asks
// it too, but completes as soon as no path reaches it, not after the
// round's timeout (a minute here), so the subscriber gets subscribed.
// Before, every widget reconnecting after a node died waited the whole
// timeout for the dead node's answer.
func TestSyncRoundStopsWaitingForUnreachablePeer(t *testing.T) {
	opts := clusterOptions()
	opts.SyncTimeout = time.Minute
	nodes, meshes := newTestCluster(t, 3, opts)
	waitDirect(t, nodes, meshes)
	for _, peer := range []string{"n2", "n3"} {
		meshes[0].cut(peer, true)
	}
	meshes[1].cut("n1", true)
	meshes[2].cut("n1", true)
	sub := nodes[1].mustDial()
	sub.subscribe("demo/thread-dead", "", nil) // expects subscribed, within the helper's read deadline
	if got := testutil.ToFloat64(nodes[1].ps.met.syncUnreachable); got < 1 {
		t.Fatalf("rounds completed for an unreachable peer: %v", got)
	}
	// The live peer still answered: a publish on n3 reaches the subscriber.
	nodes[2].publish("demo/thread-dead", 1)
	sub.expectData("1")
}
