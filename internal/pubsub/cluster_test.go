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

// Two nodes joined by a mesh over loopback TCP: a publish on A reaches
// subscribers on B (websocket and SSE), and B never sends it on.
func TestCrossNodeDelivery(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		ma, mb := newTCPMesh(t, "a"), newTCPMesh(t, "b")
		defer mb.close()
		defer ma.close()
		ma.join(mb)
		mb.join(ma)
		opts := testOptions()
		opts.PresenceInterval = 50 * time.Millisecond
		a := newNode(t, opts, ma)
		b := newNode(t, opts, mb)
		defer a.close()
		defer b.close()

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
			if m := onA.expect(typeMessage); string(m.Data) != want {
				t.Fatalf("A got %s, want %s", m.Data, want)
			}
			if m := onB.expect(typeMessage); string(m.Data) != want || m.Position.Offset != uint64(i) {
				t.Fatalf("B got %+v %s, want %s", m, m.Data, want)
			}
			if f, _ := sseB.expect(typeMessage); string(f.Data) != want {
				t.Fatalf("B sse got %s", f.Data)
			}
		}
		// And the other way round.
		b.publish("demo/thread-1", "from b")
		if m := onA.expect(typeMessage); string(m.Data) != `"from b"` {
			t.Fatalf("A got %s", m.Data)
		}
		onB.expect(typeMessage)

		// Never forwarded: each node sent exactly what was published on it.
		if got := ma.count(peerMessage, true); got != 20 {
			t.Fatalf("A broadcast %d messages, want 20", got)
		}
		if got := mb.count(peerMessage, true); got != 1 {
			t.Fatalf("B broadcast %d messages, want 1 (messages from A must not be forwarded)", got)
		}
		if got := testutil.ToFloat64(b.ps.met.publishes.WithLabelValues("peer")); got != 20 {
			t.Fatalf("B peer publishes %v", got)
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
		for _, junk := range [][]byte{nil, {0x09}, {peerMessage}, {peerMessage, 0xff}, encodePeerMessage("nope/x", []byte(`1`)),
			encodePeerMessage("demo/thread-1", []byte(`{not json`)), {peerPresence, 5, 1}} {
			b.ps.onPeer("a", junk)
		}
		if got := testutil.ToFloat64(b.ps.met.meshBad); got != 7 {
			t.Fatalf("bad peer messages counted %v, want 7", got)
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
