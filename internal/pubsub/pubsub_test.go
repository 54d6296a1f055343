package pubsub

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
)

func TestWebsocketAndSSEReceivePublish(t *testing.T) {
	for _, poller := range []bool{true, false} {
		t.Run(fmt.Sprintf("poller=%v", poller), func(t *testing.T) {
			opts := testOptions()
			opts.DisablePoller = !poller
			n := newNode(t, opts, nil)
			if (n.ps.poller != nil) != (poller && runtime.GOOS == "linux") {
				t.Fatalf("poller in use: %v", n.ps.poller != nil)
			}
			ws := n.mustDial()
			sub := ws.subscribe("demo/thread-1", "", nil)
			if sub.Channel != "demo/thread-1" || sub.Position == nil || sub.Position.Offset != 0 {
				t.Fatalf("subscribed: %+v", sub)
			}
			sse, _ := n.sse("channel=demo/thread-1", nil)
			if f, _ := sse.expect(typeSubscribed); f.Position.Offset != 0 || !strings.HasPrefix(f.Position.Epoch, "0~") {
				t.Fatalf("sse subscribed %+v", f)
			}

			pos := n.publish("demo/thread-1", map[string]any{"text": "hello\nworld", "n": 1})
			if v, _, _, ok := parseToken(pos.Epoch); !ok || len(v) != 1 || v[0].seq != 1 || pos.Offset != 1 {
				t.Fatalf("publish position %+v", pos)
			}
			m := ws.expect(typeMessage)
			if m.Channel != "demo/thread-1" || *m.Position != pos || string(m.Data) != `{"n":1,"text":"hello\nworld"}` {
				t.Fatalf("ws message %+v data %s", m, m.Data)
			}
			f, ev := sse.expect(typeMessage)
			if *f.Position != pos || string(f.Data) != string(m.Data) || ev.id != "demo/thread-1@"+pos.Epoch+":1" {
				t.Fatalf("sse message %+v id %q", f, ev.id)
			}
			// Counted once the server's write returns, which may be just
			// after the client has read it.
			testkit.WaitFor(t, settle, "two deliveries counted", func() bool { return testutil.ToFloat64(n.ps.met.deliveries) >= 2 })
			if got := testutil.ToFloat64(n.ps.met.connsWS); got != 1 {
				t.Fatalf("ws connections gauge %v", got)
			}
			// The fan-out latency is observed once the last socket is written.
			testkit.WaitFor(t, settle, "fan-out observed", func() bool { return testkit.SampleCount(t, n.ps.met.fanout) == 1 })

			// Messages keep their order.
			for i := 2; i <= 50; i++ {
				n.ps.Publish("demo/thread-1", json.RawMessage(fmt.Sprint(i)))
			}
			for i := 2; i <= 50; i++ {
				m := ws.expect(typeMessage)
				if m.Position.Offset != uint64(i) || string(m.Data) != fmt.Sprint(i) {
					t.Fatalf("message %d: %+v", i, m)
				}
				f, _ := sse.expect(typeMessage)
				if f.Position.Offset != uint64(i) {
					t.Fatalf("sse message %d: %+v", i, f)
				}
			}
		})
	}
}

// A widget embedded on another site reads the stream: an allowed Origin is
// echoed in Access-Control-Allow-Origin; a stream with no Origin gets none.
func TestSSECrossOriginHeader(t *testing.T) {
	n := newNode(t, testOptions(), nil)
	s, resp := n.sse("channel=demo/thread-1", http.Header{"Origin": {"https://blog.example"}})
	s.expect(typeSubscribed)
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "https://blog.example" {
		t.Errorf("Access-Control-Allow-Origin %q", got)
	}
	_, resp = n.sse("channel=demo/thread-2", nil)
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("without Origin: Access-Control-Allow-Origin %q", got)
	}
}

// TestMetricsTwiceOnOneRegistry: a second PubSub on one registry is a
// programming error that surfaces as an error naming the package, not as a
// panic.
func TestMetricsTwiceOnOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	first, err := New(testOptions(), nil, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	second, err := New(testOptions(), nil, nil, reg)
	if err == nil {
		second.Close()
	}
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) || !strings.HasPrefix(err.Error(), "pubsub: ") {
		t.Fatalf("second PubSub: %v", err)
	}
}
