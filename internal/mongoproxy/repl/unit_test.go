package repl

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/replica"
	"github.com/edgenode/edgenode/internal/testkit"
)

// appliedInOrder reports whether core applied exactly origin's ops 1..n,
// in order.
func appliedInOrder(ops []uint64, n int) bool {
	if len(ops) != n {
		return false
	}
	for i, s := range ops {
		if s != uint64(i+1) {
			return false
		}
	}
	return true
}

func remoteSeqs(f *fakeNode, origin string) []uint64 {
	var out []uint64
	for _, op := range f.core.Remote(origin) {
		out = append(out, op.Seq)
	}
	return out
}

// wireLog records, from what the net carries, the highest seq of a's ops
// sent to b and the highest position b reported having applied (acks and
// heartbeats), and checks the window at every send.
type wireLog struct {
	mu       sync.Mutex
	sent     uint64
	acked    uint64
	maxAhead uint64
	flags    []byte // ack flags b sent, in order
}

func (w *wireLog) observe(a, b string) func(from, to, topic string, msg []byte) {
	return func(from, to, topic string, msg []byte) {
		if topic != Topic || len(msg) == 0 {
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		switch {
		case from == a && to == b && msg[0] == msgOps:
			if origin, prev, ops, err := decodeOps(msg); err == nil && origin == a {
				w.sent = max(w.sent, prev+uint64(len(ops)))
				w.maxAhead = max(w.maxAhead, prev+uint64(len(ops))-min(w.acked, prev+uint64(len(ops))))
			}
		case from == b && msg[0] == msgAck:
			if m, err := decodeAck(msg); err == nil && m.origin == a {
				w.acked = max(w.acked, m.pos)
				w.flags = append(w.flags, m.flags)
			}
		case from == b && msg[0] == msgHeartbeat:
			if m, err := decodeHeartbeat(msg); err == nil {
				w.acked = max(w.acked, m.applied[a])
			}
		}
	}
}

func (w *wireLog) sawFlag(f byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.ContainsFunc(w.flags, func(x byte) bool { return x&f != 0 })
}

// TestUnitStreamWindow: a node streams its ops to a peer from the peer's
// position, in batches, never more than catchUpWindows × WindowOps beyond
// what the peer acknowledged (the peer starts 500 ops behind: far behind,
// so the window widens); the peer applies them in order and acknowledges
// them all.
func TestUnitStreamWindow(t *testing.T) {
	n := newFakeNet(t, "a", "b")
	var w wireLog
	n.setObserve(w.observe("a", "b"))
	a := newFakeNode(t, n, "a", true, func(o *Options) { o.BatchOps, o.WindowOps = 10, 50 })
	b := newFakeNode(t, n, "b", true, nil)
	a.start(t)
	b.start(t)
	const total = 500
	for range total / 50 {
		a.core.Write("app.c", 50)
	}
	testkit.WaitFor(t, time.Minute, "b to apply a's ops", func() bool { return len(b.core.Remote("a")) == total })
	if got := remoteSeqs(b, "a"); !appliedInOrder(got, total) {
		t.Fatalf("b applied %v", got)
	}
	testkit.WaitFor(t, time.Minute, "a to learn b's position", func() bool {
		st := a.rep.Status()
		return len(st.Peers) == 1 && st.Peers[0].Acked == total && st.Peers[0].LagOps == 0
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.maxAhead > catchUpWindows*50 {
		t.Fatalf("a had %d ops in flight beyond b's position; the window is 50, %d while b is far behind", w.maxAhead, catchUpWindows*50)
	}
	if w.sent != total {
		t.Fatalf("highest seq sent %d, want %d", w.sent, total)
	}
}

// TestUnitStreamFromPersistedPosition: after a restart, a sender resumes
// from the peer's position persisted in the core (SetPeerAck), not from
// the start of the log.
func TestUnitStreamFromPersistedPosition(t *testing.T) {
	n := newFakeNet(t, "a", "b")
	var firstPrev atomic.Int64
	firstPrev.Store(-1)
	n.setObserve(func(from, to, topic string, msg []byte) {
		if from == "a" && topic == Topic && len(msg) > 0 && msg[0] == msgOps {
			if _, prev, _, err := decodeOps(msg); err == nil {
				firstPrev.CompareAndSwap(-1, int64(prev))
			}
		}
	})
	a := newFakeNode(t, n, "a", true, nil)
	b := newFakeNode(t, n, "b", true, nil)
	a.core.Write("app.c", 150)
	if err := a.core.SetPeerAck("b", 100); err != nil {
		t.Fatal(err)
	}
	b.core.SetApplied("a", 100)
	a.start(t)
	b.start(t)
	testkit.WaitFor(t, time.Minute, "b to apply a's ops after its position", func() bool { return b.core.Applied("a") == 150 })
	if got := firstPrev.Load(); got != 100 {
		t.Fatalf("a's first batch to b followed seq %d, want 100 (b's persisted position)", got)
	}
	if got := remoteSeqs(b, "a"); len(got) != 50 || got[0] != 101 || got[49] != 150 {
		t.Fatalf("b applied %v", got)
	}
}

// TestUnitGapAckAndResend: a lost batch makes the next one not follow the
// receiver's position: it answers with a gap ack, the sender sends again
// from the acknowledged position, and every op is applied once, in order.
func TestUnitGapAckAndResend(t *testing.T) {
	n := newFakeNet(t, "a", "b")
	var w wireLog
	obs := w.observe("a", "b")
	var lostSent atomic.Int32 // messages of a's ops after seq 10: the lost batch and its resends
	n.setObserve(func(from, to, topic string, msg []byte) {
		obs(from, to, topic, msg)
		if from == "a" && topic == Topic && len(msg) > 0 && msg[0] == msgOps {
			if _, prev, _, err := decodeOps(msg); err == nil && prev == 10 {
				lostSent.Add(1)
			}
		}
	})
	var opsMsgs atomic.Int32
	n.setDrop(func(from, to, topic string, msg []byte) bool {
		// The second batch of a's ops to b is lost.
		return from == "a" && topic == Topic && len(msg) > 0 && msg[0] == msgOps && opsMsgs.Add(1) == 2
	})
	a := newFakeNode(t, n, "a", true, func(o *Options) { o.BatchOps = 10 })
	b := newFakeNode(t, n, "b", true, nil)
	a.start(t)
	b.start(t)
	// The peer's position first (so the sender streams at once), then
	// the ops in one go: several batches in flight, the second lost.
	testkit.WaitFor(t, time.Minute, "a to learn b's position", func() bool { p, ok := a.rep.senderPosition("b"); return ok && p == 0 })
	a.core.Write("app.c", 100)
	testkit.WaitFor(t, time.Minute, "b to apply a's ops", func() bool { return len(b.core.Remote("a")) == 100 })
	if got := remoteSeqs(b, "a"); !appliedInOrder(got, 100) {
		t.Fatalf("b applied %v", got)
	}
	if !w.sawFlag(ackGap) {
		t.Fatal("b never answered with a gap ack")
	}
	if got := counterValue(t, b.rep.met.gaps); got < 1 {
		t.Fatalf("gaps counted on b: %v", got)
	}
	// a went back: the lost batch was sent again (after the gap ack, or
	// after an ack that arrived while it was still sending moved its next
	// position back; only the former counts as a resend on a).
	if got := lostSent.Load(); got < 2 {
		t.Fatalf("the lost batch (ops 11-20) was sent %d times", got)
	}
}

// TestUnitClockSkewRefused: a peer's ops stamped more than the receiver's
// max clock skew ahead of its wall clock are refused (nothing applied, an
// ack flagged ackClockAhead, the refusal counted); they apply once the
// clocks agree.
func TestUnitClockSkewRefused(t *testing.T) {
	n := newFakeNet(t, "a", "b")
	var w wireLog
	n.setObserve(w.observe("a", "b"))
	a := newFakeNode(t, n, "a", true, nil)
	b := newFakeNode(t, n, "b", true, nil)
	// b's wall clock is an hour behind: a's readings are an hour ahead of
	// it, beyond its one-minute bound.
	b.core.SetWall(time.Now().Add(-time.Hour))
	a.start(t)
	b.start(t)
	testkit.WaitFor(t, time.Minute, "a to learn b's position", func() bool { p, ok := a.rep.senderPosition("b"); return ok && p == 0 })
	a.core.Write("app.c", 20)
	testkit.WaitFor(t, time.Minute, "b to refuse a's ops for its clock", func() bool { return w.sawFlag(ackClockAhead) })
	if got := counterValue(t, b.rep.met.clockSkew.WithLabelValues("a", "ops")); got < 1 {
		t.Fatalf("refused ops counted on b: %v", got)
	}
	if got := b.core.Remote("a"); len(got) != 0 {
		t.Fatalf("b applied %d ops stamped an hour ahead of its clock", len(got))
	}
	// a's heartbeats carry its clock too: b does not hear them either.
	testkit.WaitFor(t, time.Minute, "b to refuse a's heartbeats", func() bool {
		return counterValue(t, b.rep.met.clockSkew.WithLabelValues("a", "heartbeat")) >= 1
	})
	b.core.SetWall(time.Time{})
	testkit.WaitFor(t, time.Minute, "b to apply a's ops once the clocks agree", func() bool { return len(b.core.Remote("a")) == 20 })
	if got := remoteSeqs(b, "a"); !appliedInOrder(got, 20) {
		t.Fatalf("b applied %v", got)
	}
}

// TestUnitInitialSync: a node whose database is not a synced replica
// starts with writes blocked, copies a synced peer's snapshot (emptying
// its own first), takes the peer's applied vector as its positions,
// streams what follows, and accepts writes.
func TestUnitInitialSync(t *testing.T) {
	n := newFakeNet(t, "a", "b")
	a := newFakeNode(t, n, "a", true, nil)
	b := newFakeNode(t, n, "b", false, nil)
	a.core.Write("app.c", 20)
	doc := func(id string) bson.Raw { raw, _ := bson.Marshal(bson.D{{Key: "_id", Value: id}}); return raw }
	items := []replica.SnapshotItem{{Kind: replica.SnapCollection, NS: "app.c", Doc: bson.Raw{5, 0, 0, 0, 0}}}
	for i := range 2500 { // more than one chunk
		items = append(items, replica.SnapshotItem{Kind: replica.SnapDoc, NS: "app.c", Doc: doc(strings.Repeat("x", i%7) + string(rune('a'+i%26)))})
	}
	a.core.SetItems(items)
	a.start(t)
	b.start(t)
	if b.core.WritesBlocked() == "" {
		t.Fatal("an unsynced node accepts writes")
	}
	testkit.WaitFor(t, time.Minute, "b to sync", func() bool { return b.rep.Status().State == "synced" })
	if got := b.core.Calls("BeginSync"); got != 1 {
		t.Fatalf("BeginSync called %d times", got)
	}
	if got := b.core.Loaded(); len(got) != len(items) {
		t.Fatalf("b loaded %d items, want %d", len(got), len(items))
	}
	if got := b.core.Applied("a"); got != 20 {
		t.Fatalf("b's position in a's ops after the sync: %d, want a's applied vector (20)", got)
	}
	testkit.WaitFor(t, time.Minute, "b to accept writes", func() bool { return b.core.WritesBlocked() == "" })
	a.core.Write("app.c", 5)
	testkit.WaitFor(t, time.Minute, "b to stream a's ops after the vector", func() bool { return b.core.Applied("a") == 25 })
	if got := remoteSeqs(b, "a"); !slices.Equal(got, []uint64{21, 22, 23, 24, 25}) {
		t.Fatalf("b applied %v after the sync", got)
	}
}

// TestUnitReadinessAndLag: a node is not ready until synced; a peer's ops
// it has not applied count as lag (ops and age, inbound on the receiver,
// outbound on the origin), and make it not ready past MaxLag; it is ready
// again once caught up.
func TestUnitReadinessAndLag(t *testing.T) {
	n := newFakeNet(t, "a", "b")
	a := newFakeNode(t, n, "a", true, nil)
	b := newFakeNode(t, n, "b", true, func(o *Options) { o.MaxLag = 300 * time.Millisecond })
	if err := b.rep.Ready(); err == nil {
		t.Fatal("ready before the replica state is known")
	}
	var cut atomic.Bool
	n.setDrop(func(from, to, topic string, msg []byte) bool {
		return cut.Load() && from == "a" && topic == Topic && len(msg) > 0 && msg[0] == msgOps
	})
	a.start(t)
	b.start(t)
	testkit.WaitFor(t, time.Minute, "b to be ready", func() bool { return b.rep.Ready() == nil })
	cut.Store(true)
	a.core.Write("app.c", 7)
	testkit.WaitFor(t, time.Minute, "b to see a's ops as lag", func() bool {
		st := b.rep.Status()
		return len(st.Origins) == 1 && st.Origins[0].LagOps == 7 && st.Origins[0].LagSeconds > 0
	})
	testkit.WaitFor(t, time.Minute, "b not ready for its lag", func() bool {
		err := b.rep.Ready()
		return err != nil && strings.Contains(err.Error(), "7 ops of a waiting")
	})
	if st := a.rep.Status(); len(st.Peers) != 1 || st.Peers[0].LagOps != 7 {
		t.Fatalf("a's view of b: %+v", st.Peers)
	}
	cut.Store(false)
	testkit.WaitFor(t, time.Minute, "b to catch up and be ready", func() bool {
		st := b.rep.Status()
		return b.rep.Ready() == nil && len(st.Origins) == 1 && st.Origins[0].LagOps == 0
	})
}

// counterValue reads a counter.
func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestUnitRequirePeer: a node with RequirePeer and an empty op log does
// not start the cluster alone while it has heard no peer (writes refused,
// Ready naming the seeds); once a synced peer appears it syncs from it.
// With its own ops in the log, it bootstraps after BootstrapWait as before.
func TestUnitRequirePeer(t *testing.T) {
	n := newFakeNet(t, "a", "b")
	need := func(o *Options) { o.RequirePeer, o.Seeds = true, []string{"10.0.0.2:7946"} }
	a := newFakeNode(t, n, "a", false, need)
	a.start(t)
	if w := a.core.WritesBlocked(); !strings.Contains(w, "seeds 10.0.0.2:7946 not reached") {
		t.Fatalf("writes blocked with %q", w)
	}
	if err := a.rep.Ready(); err == nil || !strings.Contains(err.Error(), "--bootstrap") {
		t.Fatalf("Ready: %v", err)
	}
	// Several BootstrapWaits pass with b silent; the outcome below (a
	// syncs from b, never marks its data synced alone) shows a waited.
	time.Sleep(1500 * time.Millisecond)
	b := newFakeNode(t, n, "b", true, nil)
	b.core.Write("app.c", 3)
	b.start(t)
	testkit.WaitFor(t, time.Minute, "a to sync from b", func() bool { return a.rep.Status().State == "synced" })
	if got := a.core.Calls("BeginSync"); got != 1 {
		t.Fatalf("a: BeginSync called %d times, want 1 (a sync from b, not a bootstrap)", got)
	}
	testkit.WaitFor(t, time.Minute, "a to accept writes", func() bool { return a.core.WritesBlocked() == "" })

	// A restart with ops in the log: RequirePeer does not apply.
	n2 := newFakeNet(t, "c")
	c := newFakeNode(t, n2, "c", false, need)
	c.core.Write("app.c", 2)
	c.start(t)
	testkit.WaitFor(t, time.Minute, "c to bootstrap alone", func() bool { return c.rep.Status().State == "synced" })
	if got := c.core.Calls("BeginSync"); got != 0 {
		t.Fatalf("c: BeginSync called %d times, want a bootstrap", got)
	}
}

// TestUnitSlowApplyIsNotResent: a peer whose database applies slowly (an
// apply of a merged catch-up window takes several ResendAfter) announces
// its progress while it applies (its heartbeats carry the applied
// position, which the core moves document by document), so the sender
// does not take the long wait for the apply's ack for a loss and send
// the window being applied again. One rewind is tolerated here for a
// receiver starved of CPU for a whole ResendAfter.
func TestUnitSlowApplyIsNotResent(t *testing.T) {
	n := newFakeNet(t, "a", "b")
	tune := func(o *Options) { o.BatchOps, o.WindowOps, o.ResendAfter = 100, 500, time.Second }
	a := newFakeNode(t, n, "a", true, tune)
	b := newFakeNode(t, n, "b", true, tune)
	b.core.SlowApply(time.Millisecond)
	a.start(t)
	b.start(t)
	const total = 3000
	for range total / 100 {
		a.core.Write("app.c", 100)
	}
	testkit.WaitFor(t, 2*time.Minute, "b to apply a's ops", func() bool { return len(b.core.Remote("a")) == total })
	if got := remoteSeqs(b, "a"); !appliedInOrder(got, total) {
		t.Fatalf("b applied %v", got)
	}
	if got := counterValue(t, a.rep.met.resends.WithLabelValues("b")); got > 1 {
		t.Fatalf("a sent its window to b again %v times while b was applying it", got)
	}
}
