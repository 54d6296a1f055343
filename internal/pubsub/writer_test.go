package pubsub

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
)

// Subscribers that stop reading (their sockets full, so a write to them
// blocks) must not hold up the other subscribers of their writer shard:
// the stuck worker is replaced and the others keep getting every message,
// in order, while the stalled ones are still connected (a queue and a
// write timeout large enough that they are not cut as slow consumers
// during the test, which would free the worker by itself).
func TestStalledSubscriberDoesNotHoldUpItsShard(t *testing.T) {
	opts := testOptions()
	opts.QueueLen = 1 << 14
	opts.WriteTimeout = 5 * time.Minute
	n := newNode(t, opts, nil)

	// Consecutive connection ids: every shard gets stalled subscribers,
	// subscribed before the fast one, so ahead of it in the fan-out.
	stalled := 2 * runtime.GOMAXPROCS(0)
	for range stalled {
		ws := n.dialSmallBuffer()
		if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","channel":"demo/thread-1"}`)); err != nil {
			t.Fatal(err)
		}
	}
	testkit.WaitFor(t, settle, "stalled ones subscribed", func() bool { l, _ := n.ps.Presence("demo/thread-1"); return l == stalled })
	fast := n.mustDial()
	fast.subscribe("demo/thread-1", "", nil)

	payload := json.RawMessage(`"` + strings.Repeat("x", 16<<10) + `"`)
	want := uint64(0)
	after := 0 // messages published since the first worker was replaced
	for after < 20 {
		if want == 2000 {
			t.Fatal("no writer was replaced after 2000 messages: the stalled sockets never filled up")
		}
		if _, err := n.ps.Publish("demo/thread-1", payload); err != nil {
			t.Fatal(err)
		}
		want++
		// Each message reaches the fast subscriber before the next is
		// published; a worker stuck behind a stalled socket would keep it
		// from arriving until the read deadline.
		f := fast.expect(typeMessage)
		if f.Position.Offset != want {
			t.Fatalf("fast subscriber got offset %d, want %d", f.Position.Offset, want)
		}
		if testutil.ToFloat64(n.ps.met.writerStalls) > 0 {
			after++
		}
	}
	if got := n.ps.connCount(); got != stalled+1 {
		t.Fatalf("%d connections, want %d: stalled subscribers were cut, the test proves nothing", got, stalled+1)
	}
}
