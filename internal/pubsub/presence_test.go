package pubsub

import (
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/testkit"
)

// presence sends a presence frame and returns the reply (a presence or an
// error frame).
func (c *wsClient) presence(channel, id string) frame {
	c.t.Helper()
	c.send(map[string]any{"type": "presence", "channel": channel, "id": id})
	f := c.mustRead()
	if f.ID != id {
		c.t.Fatalf("reply %+v, want id %q", f, id)
	}
	return f
}

// A subscriber asks for its channel's presence over the websocket and gets
// the subscriber count, counting every connection subscribed to it, on this
// node and on the others (as peers report it), and nothing else: a count,
// no identities.
func TestPresenceFrame(t *testing.T) {
	opts := clusterOptions()
	opts.SubscribeRate = -1 // the wait below polls with presence frames
	nodes, meshes := newTestCluster(t, 2, opts)
	waitDirect(t, nodes, meshes)
	a := nodes[0].mustDial()
	a.subscribe("demo/thread-1", "", nil)
	if f := a.presence("demo/thread-1", "p1"); f.Type != typePresence || f.Channel != "demo/thread-1" || f.Count == nil || *f.Count != 1 {
		t.Fatalf("one subscriber: %+v", f)
	}
	b := nodes[0].mustDial()
	b.subscribe("demo/thread-1", "", nil)
	if f := b.presence("demo/thread-1", "p2"); f.Type != typePresence || f.Count == nil || *f.Count != 2 {
		t.Fatalf("two subscribers on one node: %+v", f)
	}
	// A third on the other node: the count is the cluster's, once the
	// peers' periodic report has arrived.
	c := nodes[1].mustDial()
	c.subscribe("demo/thread-1", "", nil)
	testkit.WaitFor(t, 10*time.Second, "presence 3 across two nodes", func() bool {
		f := a.presence("demo/thread-1", "p3")
		if f.Type != typePresence || f.Count == nil {
			t.Fatalf("reply %+v", f)
		}
		return *f.Count == 3
	})
	// After an unsubscribe the count goes down again.
	b.send(`{"type":"unsubscribe","channel":"demo/thread-1"}`)
	b.expect(typeUnsubscribed)
	if f := a.presence("demo/thread-1", "p4"); f.Count == nil || *f.Count != 2 {
		t.Fatalf("after an unsubscribe: %+v", f)
	}
}

// Presence is answered only for a channel the connection is subscribed
// to, so it needs the same authorization as the subscription: a public
// channel not subscribed to, a private one of the same tenant (with or
// without a token) and another tenant's channel are all refused with
// not_subscribed, and the connection goes on.
func TestPresenceRefused(t *testing.T) {
	opts, _ := isolationOptions(t)
	n := newNode(t, opts, nil)
	hour := time.Now().Add(time.Hour)

	acme := n.mustDial()
	acme.subscribe("acme/secret", token(t, "acme", "acme/secret", hour, acmeSecret), nil)
	other := n.mustDial()
	other.subscribe("other/x", "", nil)

	c := n.mustDial()
	c.subscribe("demo/thread-1", "", nil)
	for _, ch := range []string{"demo/thread-2", "demo/private-1", "acme/secret", "other/x"} {
		if f := c.presence(ch, "q"); f.Type != typeError || f.Code != codeNotSubscribed || f.Channel != ch {
			t.Fatalf("presence of %s: %+v, want not_subscribed", ch, f)
		}
	}
	// Bad frames: no channel.
	c.send(`{"type":"presence","id":"z"}`)
	c.expect(typeError, codeBadChannel)
	// The connection still works.
	if f := c.presence("demo/thread-1", "ok"); f.Type != typePresence || f.Count == nil || *f.Count != 1 {
		t.Fatalf("own channel: %+v", f)
	}
}

// Presence frames take from the subscribe token bucket: past the burst
// they are refused with rate_limited.
func TestPresenceRateLimit(t *testing.T) {
	opts := testOptions()
	opts.SubscribeRate = 0.001 // no refill during the test
	opts.SubscribeBurst = 5
	n := newNode(t, opts, nil)
	c := n.mustDial()
	c.subscribe("demo/thread-1", "", nil) // 1 of 5
	for range 8 {
		c.send(`{"type":"presence","channel":"demo/thread-1"}`)
	}
	answered, limited := 0, 0
	for range 8 {
		f := c.mustRead()
		switch {
		case f.Type == typePresence:
			answered++
		case f.Type == typeError && f.Code == codeRateLimited:
			limited++
		default:
			t.Fatalf("unexpected %+v", f)
		}
	}
	if answered != 4 || limited != 4 {
		t.Fatalf("%d answered, %d rate_limited; want 4 and 4", answered, limited)
	}
}
