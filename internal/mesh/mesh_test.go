package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
)

// Generous waits: these tests check behaviour, never timing. Elapsed times
// are logged next to the documented bounds.
const settle = 20 * time.Second

func TestThreeNodesSeeEachOther(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b", "c")
	ids := []string{"a", "b", "c"}
	for _, n := range nodes {
		waitMap(t, n, settle, n.opts.NodeID+" sees 3 alive", allState(ids, nodemap.Alive))
	}
	// Peers are verified once their links are up.
	mp := waitMap(t, nodes[0], settle, "a verifies b and c", func(mp *nodemap.Map) bool {
		return allState(ids, nodemap.Alive)(mp) && verified("b")(mp) && verified("c")(mp)
	})
	for _, n := range mp.Nodes {
		want := c.nodes[n.ID].opts
		if n.Self != (n.ID == "a") {
			t.Errorf("%s Self=%v", n.ID, n.Self)
		}
		if n.Region != want.Region || n.Lat != want.Lat || n.Lon != want.Lon || n.IPv4 != want.PublicIPv4 ||
			n.BinaryVersion != "test-1" || n.ConfigVersion != "cfg-1" || !n.HasTag("edge") || !n.Serving() {
			t.Errorf("node %s metadata %+v does not match options", n.ID, n)
		}
	}
	// Metrics follow the map.
	testkit.WaitFor(t, settle, "members metric", func() bool {
		return testutil.ToFloat64(nodes[0].met.members.WithLabelValues("alive")) == 3
	})
	testkit.WaitFor(t, settle, "links up", func() bool { return linksUp(nodes[0]) == 2 })
	testkit.WaitFor(t, settle, "probe rtt", func() bool { return testkit.SampleCount(t, nodes[0].met.probeRTTHist) > 0 })
}

// watchStates records every state each observer's maps show for id.
func watchStates(ctx context.Context, src nodemap.Source, id string) <-chan []nodemap.State {
	out := make(chan []nodemap.State, 1)
	go func() {
		var seen []nodemap.State
		defer func() { out <- seen }()
		for {
			mp, ch := src.Current()
			if n, ok := mp.Node(id); ok && (len(seen) == 0 || seen[len(seen)-1] != n.State) {
				seen = append(seen, n.State)
			}
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func TestCrashDetectedAndRejoin(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b", "c")
	ids := []string{"a", "b", "c"}
	for _, n := range nodes {
		waitMap(t, n, settle, "3 alive", allState(ids, nodemap.Alive))
	}
	a, b, victim := nodes[0], nodes[1], nodes[2]

	ctx, cancel := context.WithCancel(context.Background())
	wa, wb := watchStates(ctx, a, "c"), watchStates(ctx, b, "c")
	start := time.Now()
	victim.kill()
	bound := victim.o.tuning.DetectionBound(3)
	for _, n := range []*testNode{a, b} {
		waitMap(t, n, settle, n.opts.NodeID+" marks c dead", stateOf("c", nodemap.Dead))
		t.Logf("%s: c dead after %v (documented bound %v)", n.opts.NodeID, time.Since(start).Round(time.Millisecond), bound)
	}
	cancel()
	seenA, seenB := <-wa, <-wb
	t.Logf("states seen: a %v, b %v", seenA, seenB)
	// The first node to suspect c did so after its own probe failed, which
	// is exactly what the mesh can observe; it must show up before Dead.
	if !containsBefore(seenA, nodemap.Suspect, nodemap.Dead) && !containsBefore(seenB, nodemap.Suspect, nodemap.Dead) {
		t.Errorf("no observer showed c as suspect before dead: a %v b %v", seenA, seenB)
	}
	// Links to the dead peer are gone; sending to it is refused.
	testkit.WaitFor(t, settle, "link to c removed", func() bool {
		return errors.Is(a.Send("c", "t", []byte("x")), ErrUnknownPeer)
	})

	// Restart c with the same id and addresses: it rejoins.
	opts := victim.opts
	opts.Seeds = []string{a.opts.BindAddr}
	start = time.Now()
	c2 := c.startNoSeedUpdate(opts)
	for _, n := range []*testNode{a, b, c2} {
		waitMap(t, n, settle, n.opts.NodeID+" sees c back", allState(ids, nodemap.Alive))
	}
	t.Logf("rejoin took %v", time.Since(start).Round(time.Millisecond))
	// And its links work again.
	in := newInbox()
	c2.Handle("t", in.handler("t"))
	testkit.WaitFor(t, settle, "send to rejoined c", func() bool {
		_ = a.Send("c", "t", []byte("hello again"))
		return len(in.snapshot()) > 0
	})
}

func containsBefore(s []nodemap.State, first, then nodemap.State) bool {
	for i, st := range s {
		if st == first {
			for _, st2 := range s[i+1:] {
				if st2 == then {
					return true
				}
			}
		}
	}
	return false
}

func TestDrainThenLeave(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b", "c")
	ids := []string{"a", "b", "c"}
	for _, n := range nodes {
		waitMap(t, n, settle, "3 alive", allState(ids, nodemap.Alive))
	}
	a, b, leaver := nodes[0], nodes[1], nodes[2]
	ctx, cancel := context.WithCancel(context.Background())
	wa := watchStates(ctx, a, "c")

	if err := leaver.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	self, _ := leaver.Current()
	if n, _ := self.Node("c"); n.State != nodemap.Draining || n.Serving() {
		t.Errorf("own map after Drain: %+v", n)
	}
	for _, n := range []*testNode{a, b} {
		waitMap(t, n, settle, n.opts.NodeID+" sees c draining", stateOf("c", nodemap.Draining))
	}
	if err := leaver.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{a, b} {
		waitMap(t, n, settle, n.opts.NodeID+" drops c", absent("c"))
	}
	cancel()
	seen := <-wa
	if len(seen) < 2 || seen[0] != nodemap.Alive || seen[1] != nodemap.Draining {
		t.Errorf("a saw c go through %v, want alive, draining, then removal", seen)
	}
	for _, st := range seen {
		if st == nodemap.Dead {
			t.Errorf("a marked c dead although it left: %v", seen)
		}
	}
	// Leave is idempotent, and a left node refuses to send.
	if err := leaver.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := leaver.Send("a", "t", nil); err == nil {
		t.Error("send after leave succeeded")
	}
}

func TestSendAndBroadcast(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b", "c")
	ids := []string{"a", "b", "c"}
	inboxes := map[string]*inbox{}
	for _, n := range nodes {
		in := newInbox()
		inboxes[n.opts.NodeID] = in
		n.Handle("orders", in.handler("orders"))
		n.Handle("news", in.handler("news"))
	}
	for _, n := range nodes {
		waitMap(t, n, settle, "3 alive", allState(ids, nodemap.Alive))
	}
	a, b := nodes[0], nodes[1]

	// In-order delivery of many messages on one topic to the right peer.
	const count = 2000
	for i := range count {
		msg := fmt.Appendf(nil, "order-%d", i)
		for {
			err := a.Send("b", "orders", msg)
			if err == nil {
				break
			}
			if !errors.Is(err, ErrQueueFull) {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	got := inboxes["b"].waitCount(t, count, settle)
	for i, r := range got {
		if r.from != "a" || r.topic != "orders" || string(r.msg) != fmt.Sprintf("order-%d", i) {
			t.Fatalf("message %d: %+v", i, r)
		}
	}
	if n := len(inboxes["c"].snapshot()); n != 0 {
		t.Fatalf("c got %d messages meant for b", n)
	}
	if n := len(inboxes["a"].snapshot()); n != 0 {
		t.Fatalf("a got %d of its own messages", n)
	}

	// Broadcast reaches every other node once.
	b.Broadcast("news", []byte("extra"))
	ra := inboxes["a"].waitCount(t, 1, settle)
	rc := inboxes["c"].waitCount(t, 1, settle)
	if ra[0].from != "b" || string(ra[0].msg) != "extra" || rc[0].from != "b" || rc[0].topic != "news" {
		t.Fatalf("broadcast delivered %+v and %+v", ra, rc)
	}
	// A copy of the broadcast looping back to b through a or c would travel
	// their news streams to b ahead of anything they send on news later:
	// once b has a marker from each, any such copy would have arrived.
	for _, n := range []*testNode{a, c.nodes["c"]} {
		if err := n.Send("b", "news", []byte("marker")); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range inboxes["b"].waitCount(t, count+2, settle)[count:] {
		if string(r.msg) != "marker" {
			t.Fatalf("b received %q from %s: broadcast must not loop back", r.msg, r.from)
		}
	}

	// A large message and an empty one survive framing.
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	if err := c.nodes["c"].Send("a", "orders", big); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes["c"].Send("a", "orders", nil); err != nil {
		t.Fatal(err)
	}
	r := inboxes["a"].waitCount(t, 3, settle)
	if !bytes.Equal(r[1].msg, big) || len(r[2].msg) != 0 {
		t.Fatalf("big/empty messages mangled: %d, %d bytes", len(r[1].msg), len(r[2].msg))
	}

	// Errors.
	if err := a.Send("nobody", "orders", nil); !errors.Is(err, ErrUnknownPeer) {
		t.Errorf("send to unknown: %v", err)
	}
	if err := a.Send("a", "orders", nil); !errors.Is(err, ErrSelf) {
		t.Errorf("send to self: %v", err)
	}
	if err := a.Send("b", "bad topic", nil); err == nil {
		t.Error("bad topic accepted")
	}
	if err := a.Send("b", "orders", make([]byte, DefaultMaxMessageSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too large: %v", err)
	}
	// Messages on a topic nobody handles are dropped and counted.
	if err := a.Send("b", "unhandled", []byte("x")); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, settle, "no_handler drop", func() bool {
		return testutil.ToFloat64(b.met.drops.WithLabelValues("no_handler")) == 1
	})
	if v := testutil.ToFloat64(a.met.messages.WithLabelValues("orders", "out")); v != count {
		t.Errorf("a counted %v orders out, want %d", v, count)
	}
	if v := testutil.ToFloat64(b.met.bytes.WithLabelValues("orders", "in")); v == 0 {
		t.Error("b counted no bytes in")
	}
}

func TestSlowPeerDoesNotBlockOthers(t *testing.T) {
	c := newCluster(t)
	optsA := c.options("a")
	optsA.QueueLen = 64
	a := c.start(optsA)
	b := c.start(c.options("b"))
	cc := c.start(c.options("c"))
	ids := []string{"a", "b", "c"}
	for _, n := range []*testNode{a, b, cc} {
		waitMap(t, n, settle, "3 alive", allState(ids, nodemap.Alive))
	}
	release := make(chan struct{})
	var slowGot atomic.Int64
	b.Handle("t", func(string, []byte) {
		<-release // b stops reading: its QUIC windows fill, then a's queue for b
		slowGot.Add(1)
	})
	fast := newInbox()
	cc.Handle("t", fast.handler("t"))
	testkit.WaitFor(t, settle, "links up", func() bool { return linksUp(a) == 2 })
	// Flood only links a has verified (made to the processes b's and c's
	// gossip announce), so the test exercises the links that stay.
	waitMap(t, a, settle, "b and c verified", func(mp *nodemap.Map) bool {
		nb, okb := mp.Node("b")
		nc, okc := mp.Node("c")
		return okb && okc && nb.Verified && nc.Verified
	})

	msg := make([]byte, 16<<10)
	sentC, full := 0, 0
	maxDepth := 0.0
	start := time.Now()
	for i := 0; full < 100; i++ {
		if time.Since(start) > settle {
			t.Fatalf("b's queue never filled (%d sends)", i)
		}
		switch err := a.Send("b", "t", msg); {
		case errors.Is(err, ErrQueueFull):
			full++
			// Sampled while it is full: the link's writer may still move
			// queued messages into QUIC buffers when b's flow-control
			// window grows, so the depth read later can be 0.
			maxDepth = max(maxDepth, peerMetric(a, descQueueDepth, "b"))
		case err != nil:
			t.Fatal(err)
		}
		// Every send to b is paired with one to c, which must never be held up.
		if err := a.Send("c", "t", msg); err != nil {
			// c's queue may fill briefly while a floods it; never for good.
			time.Sleep(time.Millisecond)
			continue
		}
		sentC++
	}
	fast.waitCount(t, sentC, settle)
	if d := testutil.ToFloat64(a.met.drops.WithLabelValues("queue_full")); d < 100 {
		t.Errorf("queue_full drops %v, want >= 100", d)
	}
	if maxDepth == 0 {
		t.Error("queue depth for b read 0 while its queue was full")
	}
	if d := peerMetric(a, descPeerDrops, "b"); d < 100 {
		t.Errorf("per-peer drops for b %v", d)
	}
	// Sending to c still works while b is stuck; then b recovers.
	if err := a.Send("c", "t", []byte("after")); err != nil {
		t.Fatal(err)
	}
	fast.waitCount(t, sentC+1, settle)
	close(release)
	testkit.WaitFor(t, settle, "b drains", func() bool {
		return peerMetric(a, descQueueDepth, "b") == 0 && slowGot.Load() > 0
	})
	t.Logf("sent %d to c, %d dropped for b, b got %d", sentC, full, slowGot.Load())
}

func TestForeignCertificateRefused(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b")
	for _, n := range nodes {
		waitMap(t, n, settle, "2 alive", allState([]string{"a", "b"}, nodemap.Alive))
	}
	// "a0" has the right gossip key but a certificate from another CA, so
	// membership accepts it but no link forms. Ids decide who dials: a
	// dials a0, a0 dials b; each refuses the other's server certificate.
	other := newCluster(t)
	opts := other.options("a0")
	opts.Seeds = []string{nodes[0].opts.BindAddr}
	rogue := c.startNoSeedUpdate(opts)
	all := []string{"a", "a0", "b"}
	for _, n := range append(nodes, rogue) {
		waitMap(t, n, settle, "a0 in membership", allState(all, nodemap.Alive))
	}
	inA, inB, inM := newInbox(), newInbox(), newInbox()
	nodes[0].Handle("t", inA.handler("t"))
	nodes[1].Handle("t", inB.handler("t"))
	rogue.Handle("t", inM.handler("t"))
	refusedByA := func() float64 { return testutil.ToFloat64(nodes[0].met.refused.WithLabelValues("bad_certificate")) }
	refusedByRogue := func() float64 { return testutil.ToFloat64(rogue.met.refused.WithLabelValues("bad_certificate")) }
	testkit.WaitFor(t, settle, "a refuses a0 as server", func() bool { return refusedByA() > 0 })
	// a0 dials b, but b's certificate is not from a0's CA: a0 gives up
	// before presenting its own. (The server side of a refusal is tested
	// with a hand-made client in TestInboundLinkChecks.)
	testkit.WaitFor(t, settle, "a0 refuses b as server", func() bool { return refusedByRogue() > 0 })
	beforeA, beforeRogue := refusedByA(), refusedByRogue()
	for range 20 {
		_ = rogue.Send("a", "t", []byte("let me in"))
		_ = rogue.Send("b", "t", []byte("let me in"))
		_ = nodes[0].Send("a0", "t", []byte("secret"))
		_ = nodes[1].Send("a0", "t", []byte("secret"))
	}
	// The messages wait in the queues for a link. The dialers (a for a-a0,
	// a0 for a0-b) retry with backoff: once each retry after the sends has
	// been refused again, every chance these messages had to get through
	// has been taken.
	testkit.WaitFor(t, settle, "a refuses a0 again with messages queued", func() bool { return refusedByA() > beforeA })
	testkit.WaitFor(t, settle, "a0 refuses b again with messages queued", func() bool { return refusedByRogue() > beforeRogue })
	if n := len(inA.snapshot()) + len(inB.snapshot()); n != 0 {
		t.Errorf("%d messages from a foreign-CA peer accepted", n)
	}
	if n := len(inM.snapshot()); n != 0 {
		t.Errorf("foreign-CA peer received %d messages", n)
	}
	if peerMetric(nodes[0], descLinkUp, "a0") != 0 {
		t.Error("link to m is up")
	}
	if !nodes[0].logs.Contains("peer link refused") {
		t.Error("refusal not logged")
	}
}

func TestWrongGossipKeyCannotJoin(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b")
	for _, n := range nodes {
		waitMap(t, n, settle, "2 alive", allState([]string{"a", "b"}, nodemap.Alive))
	}
	opts := c.options("x")
	opts.GossipKeys = [][]byte{[]byte("another key that is 32 bytes!!!!")}
	x := c.start(opts)
	// x keeps trying (each attempt counted) and never gets in.
	testkit.WaitFor(t, settle, "x's join attempts fail", func() bool {
		return testutil.ToFloat64(x.met.joinAttempts.WithLabelValues("failed")) >= 3
	})
	if _, err := x.running().Join([]string{nodes[0].opts.BindAddr}); err == nil {
		t.Error("join with the wrong key succeeded")
	}
	for _, n := range append(nodes, x) {
		mp, _ := n.Current()
		if n == x && len(mp.Nodes) != 1 || n != x && len(mp.Nodes) != 2 {
			t.Errorf("%s sees %s", n.opts.NodeID, describe(mp))
		}
	}
}

func TestGossipKeyRotation(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b")
	for _, n := range nodes {
		waitMap(t, n, settle, "2 alive", allState([]string{"a", "b"}, nodemap.Alive))
	}
	newKey := []byte("the new key is also 32 bytes....")
	// Step 1: every node learns the new key.
	for _, n := range nodes {
		if err := n.AddGossipKey(newKey); err != nil {
			t.Fatal(err)
		}
	}
	// Step 2: every node encrypts with it.
	for _, n := range nodes {
		if err := n.UseGossipKey(newKey); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(n.GossipKeys()[0], newKey) {
			t.Fatal("primary not switched")
		}
	}
	// Step 3: the old key goes.
	for _, n := range nodes {
		if err := n.RemoveGossipKey(testKey); err != nil {
			t.Fatal(err)
		}
		if len(n.GossipKeys()) != 1 {
			t.Fatalf("keys left: %d", len(n.GossipKeys()))
		}
	}
	if err := nodes[0].RemoveGossipKey(newKey); err == nil {
		t.Error("removed the primary key")
	}
	// A node with only the new key joins; one with only the old key does not.
	fresh := c.options("c")
	fresh.GossipKeys = [][]byte{newKey}
	n3 := c.start(fresh)
	for _, n := range append(nodes, n3) {
		waitMap(t, n, settle, "3 alive with the new key", allState([]string{"a", "b", "c"}, nodemap.Alive))
	}
	stale := c.options("d")
	stale.GossipKeys = [][]byte{testKey}
	sn := c.start(stale)
	if _, err := sn.running().Join([]string{nodes[0].opts.BindAddr}); err == nil {
		t.Error("node with the removed key joined")
	}
}

func TestLoadIsGossiped(t *testing.T) {
	c := newCluster(t)
	o := c.options("a")
	o.LoadUpdateInterval = 100 * time.Millisecond
	a := c.start(o)
	b := c.start(c.options("b"))
	waitMap(t, b, settle, "2 alive", allState([]string{"a", "b"}, nodemap.Alive))
	for i := range 50 { // many quick updates collapse into few gossip rounds
		a.SetLoad(float64(i) / 100)
	}
	a.SetLoad(0.75)
	waitMap(t, b, settle, "b sees a's load", func(mp *nodemap.Map) bool {
		n, _ := mp.Node("a")
		return n.Load == 0.75
	})
	waitMap(t, a, settle, "a's own map has its load", func(mp *nodemap.Map) bool {
		n, _ := mp.Node("a")
		return n.Load == 0.75 && n.Self
	})
}

func TestContextCancelStopsEverything(t *testing.T) {
	c := newCluster(t)
	a := c.start(c.options("a"))
	opts := c.options("b")
	opts.Seeds = []string{a.opts.BindAddr}
	m, err := New(opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitMap(t, a, settle, "b joined", stateOf("b", nodemap.Alive))
	cancel()
	done := make(chan struct{})
	go func() { m.wg.Wait(); m.links.peerWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(settle):
		t.Fatal("goroutines still running after context cancel")
	}
	// Cancel is a crash to the others: b is declared dead, not left.
	waitMap(t, a, settle, "a marks b dead", stateOf("b", nodemap.Dead))
	if err := m.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err == nil {
		t.Fatal("restart of a stopped mesh succeeded")
	}
}
