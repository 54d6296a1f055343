package pubsub

import (
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
)

// newTestCluster starts n nodes ("n1", "n2", ...) joined by a full mesh of
// real loopback TCP connections.
func newTestCluster(t *testing.T, n int, opts Options) ([]*node, []*tcpMesh) {
	t.Helper()
	meshes := make([]*tcpMesh, n)
	for i := range meshes {
		meshes[i] = newTCPMesh(t, fmt.Sprintf("n%d", i+1))
	}
	t.Cleanup(func() {
		for _, m := range meshes {
			m.close()
		}
	})
	for i, m := range meshes {
		for j, o := range meshes {
			if i != j {
				m.join(o)
			}
		}
	}
	nodes := make([]*node, n)
	for i := range nodes {
		nodes[i] = newNode(t, opts, meshes[i])
	}
	return nodes, meshes
}

// clusterOptions are testOptions with quick heartbeats.
func clusterOptions() Options {
	o := testOptions()
	o.HeartbeatInterval = 50 * time.Millisecond
	o.PresenceInterval = 50 * time.Millisecond
	return o
}

// direct reports whether node n's direct path to peer id works.
func (n *node) direct(id string) bool {
	n.ps.cl.mu.RLock()
	defer n.ps.cl.mu.RUnlock()
	ps := n.ps.cl.peers[id]
	return ps != nil && ps.direct
}

// waitDirect waits until every node's direct path to every other works.
func waitDirect(t *testing.T, nodes []*node, meshes []*tcpMesh) {
	t.Helper()
	testkit.WaitFor(t, settle, "direct paths between every pair", func() bool {
		for i, n := range nodes {
			for j, m := range meshes {
				if i != j && !n.direct(m.self) {
					return false
				}
			}
		}
		return true
	})
}

func sent(n *node, peer, path string) float64 {
	return testutil.ToFloat64(n.ps.met.peerSent.WithLabelValues(peer, path))
}

// Two nodes joined by a mesh over loopback TCP: a publish on A reaches
// subscribers on B (websocket and SSE) at the same position as on A, and B
// never sends it on.
func TestCrossNodeDelivery(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		ma, mb := newTCPMesh(t, "a"), newTCPMesh(t, "b")
		defer mb.close()
		defer ma.close()
		ma.join(mb)
		mb.join(ma)
		opts := clusterOptions()
		a := newNode(t, opts, ma)
		b := newNode(t, opts, mb)
		defer a.close()
		defer b.close()
		waitDirect(t, []*node{a, b}, []*tcpMesh{ma, mb})

		onA := a.mustDial()
		onA.subscribe("demo/thread-1", "", nil)
		onB := b.mustDial()
		onB.subscribe("demo/thread-1", "", nil)
		sseB, _ := b.sse("channel=demo/thread-1", nil)
		sseB.expect(typeSubscribed)

		for i := 1; i <= 20; i++ {
			a.publish("demo/thread-1", map[string]int{"i": i})
		}
		for i := 1; i <= 20; i++ {
			want := fmt.Sprintf(`{"i":%d}`, i)
			mA := onA.expect(typeMessage)
			if string(mA.Data) != want || mA.Position.Offset != uint64(i) {
				t.Fatalf("A got %+v %s, want %s", mA, mA.Data, want)
			}
			// Positions mean the same on every node.
			if m := onB.expect(typeMessage); string(m.Data) != want || *m.Position != *mA.Position {
				t.Fatalf("B got %+v %s, want %s at %+v", m, m.Data, want, mA.Position)
			}
			if f, ev := sseB.expect(typeMessage); string(f.Data) != want || ev.id != "demo/thread-1@"+mA.Position.Epoch+":"+fmt.Sprint(i) {
				t.Fatalf("B sse got %s id %q", f.Data, ev.id)
			}
		}
		// And the other way round.
		b.publish("demo/thread-1", "from b")
		mA := onA.expect(typeMessage)
		if string(mA.Data) != `"from b"` {
			t.Fatalf("A got %s", mA.Data)
		}
		if m := onB.expect(typeMessage); *m.Position != *mA.Position || m.Position.Offset != 21 {
			t.Fatalf("B at %+v, A at %+v", m.Position, mA.Position)
		}

		// Never forwarded: each node sent exactly what was published on it.
		// (A heartbeat late on a loaded machine may make a node resend
		// what it sent lately; the copies are dropped as duplicates.)
		if got := sent(a, "b", "direct") + sent(a, "b", "relay"); got != 20 {
			t.Fatalf("A counted %v sent to B, want 20", got)
		}
		if got := sent(b, "a", "direct") + sent(b, "a", "relay"); got != 1 {
			t.Fatalf("B counted %v sent to A, want 1 (messages from A must not be forwarded)", got)
		}
		if got := testutil.ToFloat64(b.ps.met.relayed); got != 0 {
			t.Fatalf("B relayed %v", got)
		}
		if got := testutil.ToFloat64(b.ps.met.peerReceived.WithLabelValues("accepted")); got != 20 {
			t.Fatalf("B accepted %v messages from A", got)
		}

		// Presence adds up across nodes (A: 1 websocket; B: websocket and SSE).
		testkit.WaitFor(t, settle, "cluster presence", func() bool {
			l, c := a.ps.Presence("demo/thread-1")
			return l == 1 && c == 3
		})
		resp, err := http.Get(b.admin.URL + "/v1/presence/demo/thread-1")
		if err != nil {
			t.Fatal(err)
		}
		var pr presenceReply
		json.NewDecoder(resp.Body).Decode(&pr)
		resp.Body.Close()
		if pr.Local != 2 || pr.Cluster != 3 {
			testkit.WaitFor(t, settle, "presence on B", func() bool { l, c := b.ps.Presence("demo/thread-1"); return l == 2 && c == 3 })
		}

		// A peer's junk is counted and dropped, never delivered.
		junk := [][]byte{nil, {0x7f}, {kindMessage}, {kindMessage, 0xff},
			encodeMessage(wireMsg{channel: "nope/x", sid: 1, seq: 1, data: []byte(`1`)}),
			encodeMessage(wireMsg{channel: "demo/thread-1", sid: 1, seq: 1, data: []byte(`{not json`)}),
			{kindPresence, 5, 1},
			wrap(kindRelayed, "c", wrap(kindRelayed, "d", encodeLegacy("demo/thread-1", []byte(`1`)))),
			wrap(kindRelayed, "c", encodeHeartbeat(heartbeat{instance: 1}))}
		before := testutil.ToFloat64(b.ps.met.meshBad)
		for _, j := range junk {
			b.ps.onPeer("a", MeshTopic, j)
		}
		if got := testutil.ToFloat64(b.ps.met.meshBad) - before; got != float64(len(junk)) {
			t.Fatalf("bad peer messages counted %v, want %d", got, len(junk))
		}
		b.publish("demo/thread-1", "after junk")
		if m := onB.expect(typeMessage); string(m.Data) != `"after junk"` {
			t.Fatalf("B got %s after junk", m.Data)
		}
		onB.ws.Close()
		onA.ws.Close()
	}()
	checkGoroutines(t, base)
}

// relayChoice returns the peers n could relay through to target (direct
// to n, reaching target) and those it would use now.
func (n *node) relayChoice(target string) (cands, via []string) {
	c := n.ps.cl
	c.mu.RLock()
	defer c.mu.RUnlock()
	ps := c.peers[target]
	if ps == nil {
		return nil, nil
	}
	for id, r := range c.peers {
		if r != ps && r.direct && r.reach[target] {
			cands = append(cands, id)
		}
	}
	return cands, c.relaysLocked(ps)
}
