package pubsub

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A client that lost its connection resumes from its last position: it gets
// what it missed, in order, then live messages; when the history does not
// cover the gap it is told to reload.
func TestRecoveryAfterDroppedConnection(t *testing.T) {
	opts := testOptions()
	opts.History = 5
	n := newNode(t, opts, nil)

	c := n.mustDial()
	c.subscribe("demo/thread-1", "", nil)
	for i := 1; i <= 3; i++ {
		n.publish("demo/thread-1", i)
	}
	var first, last Position
	for i := 1; i <= 3; i++ {
		last = *c.expect(typeMessage).Position
		if i == 1 {
			first = last
		}
	}
	c.ws.Close() // dropped

	for i := 4; i <= 6; i++ {
		n.publish("demo/thread-1", i)
	}
	c = n.mustDial()
	sub := c.subscribe("demo/thread-1", "", &last)
	if sub.Recovered == nil || *sub.Recovered != 3 || sub.Position.Offset != 6 {
		t.Fatalf("subscribed %+v", sub)
	}
	var live Position
	for i := 4; i <= 6; i++ {
		m := c.expect(typeMessage)
		if m.Position.Offset != uint64(i) || string(m.Data) != fmt.Sprint(i) {
			t.Fatalf("replayed %+v %s, want %d", m, m.Data, i)
		}
	}
	n.publish("demo/thread-1", 7)
	if m := c.expect(typeMessage); m.Position.Offset != 7 {
		t.Fatalf("live %+v", m)
	} else {
		live = *m.Position
	}
	// Up to date: nothing to replay.
	c2 := n.mustDial()
	if s := c2.subscribe("demo/thread-1", "", &live); *s.Recovered != 0 {
		t.Fatalf("subscribed %+v", s)
	}
	c2.sync()

	// Gaps the history does not cover: too old (history holds 3..7), a
	// position naming only a stream this node does not know (so it misses
	// all of this node's), a position from the future, a position from
	// before positions were cluster-wide.
	v, ts, _, _ := parseToken(live.Epoch)
	future := vector{{v[0].sid, 99}}.token(ts)
	for i, since := range []Position{first, {"baaaaaaa.6~" + fmt.Sprint(ts), 6}, {future, 99}, {"k3j5x2ab", 6}} {
		c3 := n.mustDial()
		c3.send(map[string]any{"type": "subscribe", "channel": "demo/thread-1", "since": since})
		c3.expect(typeError, codeMustReload)
		s := c3.expect(typeSubscribed)
		if s.Recovered != nil || s.Position.Offset != uint64(7+i) {
			t.Fatalf("after must_reload: %+v", s)
		}
		n.publish("demo/thread-1", "live")
		c3.expect(typeMessage)
		c.expect(typeMessage)
		c2.expect(typeMessage)
	}
	if got := testutil.ToFloat64(n.ps.met.recoveries.WithLabelValues("must_reload")); got != 4 {
		t.Fatalf("must_reload counted %v", got)
	}
	if got := testutil.ToFloat64(n.ps.met.recoveries.WithLabelValues("recovered")); got != 2 {
		t.Fatalf("recovered counted %v", got)
	}
	// A malformed position is a bad frame.
	c4 := n.mustDial()
	c4.send(map[string]any{"type": "subscribe", "channel": "demo/thread-1", "since": Position{"abcdefgh.x~1", 1}})
	c4.expect(typeError, codeBadFrame)
}

func TestRecoveryHistoryExpires(t *testing.T) {
	opts := testOptions()
	opts.HistoryTTL = 20 * time.Millisecond
	n := newNode(t, opts, nil)
	c := n.mustDial()
	sub := c.subscribe("demo/thread-1", "", nil)
	n.publish("demo/thread-1", 1)
	m := c.expect(typeMessage)
	c.ws.Close()
	n.publish("demo/thread-1", 2)
	time.Sleep(50 * time.Millisecond) // older than HistoryTTL now
	// From the last message, and from the subscription (before any
	// message): message 2 (and 1) are gone.
	for _, since := range []*Position{m.Position, sub.Position} {
		c = n.mustDial()
		c.send(map[string]any{"type": "subscribe", "channel": "demo/thread-1", "since": since})
		c.expect(typeError, codeMustReload)
		c.expect(typeSubscribed)
	}
}

// An EventSource resumes through Last-Event-ID; channels of the stream
// whose position is unknown are told to reload.
func TestSSERecoveryWithLastEventID(t *testing.T) {
	n := newNode(t, testOptions(), nil)
	s, _ := n.sse("channel=demo/thread-1&channel=demo/thread-2", nil)
	s.expect(typeSubscribed)
	s.expect(typeSubscribed)
	n.publish("demo/thread-1", 1)
	_, ev := s.expect(typeMessage)
	s.resp.Body.Close()
	n.publish("demo/thread-1", 2)
	n.publish("demo/thread-1", 3)

	s, _ = n.sse("channel=demo/thread-1&channel=demo/thread-2", http.Header{"Last-Event-ID": {ev.id}})
	if f, _ := s.expect(typeSubscribed); *f.Recovered != 2 {
		t.Fatalf("subscribed %+v", f)
	}
	for i := 2; i <= 3; i++ {
		if f, _ := s.expect(typeMessage); string(f.Data) != fmt.Sprint(i) {
			t.Fatalf("replayed %s", f.Data)
		}
	}
	if f, _ := s.expect(typeError); f.Code != codeMustReload || f.Channel != "demo/thread-2" {
		t.Fatalf("thread-2: %+v", f)
	}
	s.expect(typeSubscribed)

	// since= parameters do the same without the header.
	if !strings.HasPrefix(ev.id, "demo/thread-1@") {
		t.Fatalf("event id %q", ev.id)
	}
	s2, _ := n.sse("channel=demo/thread-1&since=demo/thread-1@"+ev.id[len("demo/thread-1@"):], nil)
	if f, _ := s2.expect(typeSubscribed); *f.Recovered != 2 {
		t.Fatalf("since: %+v", f)
	}
}
