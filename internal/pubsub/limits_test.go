package pubsub

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestSubscribeChurnBounded plays one websocket client that subscribes to
// a new channel name, unsubscribes, and does it again, as fast as the
// server answers. Every name used to leave a channel behind (kept for its
// history TTL, five minutes), so the channel map, the channel gauge and the
// heap grew with every name. Now channels without subscribers are
// forgotten oldest-first whenever the channel cap needs room: the map and
// the gauge stay at the cap, the heap stays flat, and no subscribe fails.
//
// The subscribe rate limit is off here (at its default it would make a
// million cycles take more than a day); TestSubscribeRateLimit covers it.
// The cap is small so that the churn goes a thousand times around it
// (a hundred with -short).
func TestSubscribeChurnBounded(t *testing.T) {
	const limit = 1000
	cycles := 1_000_000
	if testing.Short() {
		cycles = 100_000
	}
	opts := testOptions()
	opts.MaxChannels = limit
	opts.MaxChannelsPerTenant = limit
	opts.SubscribeRate = -1
	n := newNode(t, opts, nil)
	c := n.mustDial()

	mapSize := func() int {
		n.ps.chMu.RLock()
		defer n.ps.chMu.RUnlock()
		return len(n.ps.channels)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	// Warm up to the cap, then measure from there.
	churn(t, c, 0, 2*limit)
	heap0 := heap()

	for start := 2 * limit; start < cycles; start += 20_000 {
		churn(t, c, start, min(start+20_000, cycles))
		gauge := testutil.ToFloat64(n.ps.met.channels)
		if size := mapSize(); size > limit || gauge > limit {
			t.Fatalf("after %d subscribe/unsubscribe cycles: %d channels kept, gauge %v; cap %d", start+20_000, size, gauge, limit)
		}
	}
	if got := testutil.ToFloat64(n.ps.met.subs); got != 0 {
		t.Errorf("subscriptions gauge %v, want 0", got)
	}
	if gauge, size := testutil.ToFloat64(n.ps.met.channels), mapSize(); gauge != float64(size) {
		t.Errorf("channel gauge %v, map %d", gauge, size)
	}
	// Generous: a thousand idle channels are well under a megabyte; what
	// is measured is that a million names did not leave a million channels
	// (about 220 bytes each).
	if h := heap(); h > heap0+32<<20 {
		t.Errorf("heap grew from %d to %d bytes over the churn", heap0, h)
	}
	t.Logf("heap %d -> %d bytes; %v channels", heap0, heap(), testutil.ToFloat64(n.ps.met.channels))
}

// churn runs subscribe/unsubscribe cycles for channels demo/thread-c{from}
// up to c{to}, pipelined (a bounded window of cycles in flight), and fails
// on any reply but subscribed/unsubscribed.
func churn(t *testing.T, c *wsClient, from, to int) {
	t.Helper()
	const window = 64
	errc := make(chan error, 1)
	progress := make(chan struct{}, window)
	go func() {
		for range to - from {
			var got [2]frame
			for i := range got {
				_ = c.ws.SetReadDeadline(time.Now().Add(30 * time.Second))
				_, b, err := c.ws.ReadMessage()
				if err != nil {
					errc <- err
					return
				}
				if err := json.Unmarshal(b, &got[i]); err != nil {
					errc <- err
					return
				}
			}
			if got[0].Type != typeSubscribed || got[1].Type != typeUnsubscribed {
				errc <- fmt.Errorf("replies %+v, %+v", got[0], got[1])
				return
			}
			progress <- struct{}{}
		}
		errc <- nil
	}()
	for i := from; i < to; i++ {
		if i-from >= window {
			select {
			case <-progress:
			case err := <-errc:
				t.Fatalf("cycle %d: %v", i, err)
			}
		}
		name := "demo/thread-c" + strconv.Itoa(i)
		for _, typ := range []string{"subscribe", "unsubscribe"} {
			if err := c.ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"`+typ+`","channel":"`+name+`"}`)); err != nil {
				t.Fatalf("cycle %d: %v", i, err)
			}
		}
	}
	for {
		select {
		case <-progress:
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
			return
		}
	}
}

// TestChannelCaps: when every kept channel has subscribers, a subscribe to
// a new channel over the tenant's cap, or over the node's, gets a clear
// error frame; another tenant is not held back by the first one's cap;
// when a subscriber leaves, its channel makes room.
func TestChannelCaps(t *testing.T) {
	opts := testOptions()
	opts.MaxSubsPerConn = 10
	opts.MaxChannelsPerTenant = 15
	opts.MaxChannels = 20
	n := newNode(t, opts, nil)
	a, b := n.mustDial(), n.mustDial()
	for i := range 10 {
		a.subscribe("demo/thread-"+strconv.Itoa(i), "", nil)
	}
	for i := 10; i < 15; i++ {
		b.subscribe("demo/thread-"+strconv.Itoa(i), "", nil)
	}
	b.send(`{"type":"subscribe","channel":"demo/thread-15","id":"x"}`)
	if f := b.expect(typeError, codeTooManyChannels); f.Channel != "demo/thread-15" || f.ID != "x" || f.Reason == "" {
		t.Fatalf("over the tenant cap: %+v", f)
	}
	// An existing channel is not a new one.
	b.subscribe("demo/thread-0", "", nil)

	o := n.mustDial()
	for i := range 5 {
		o.subscribe("other/t"+strconv.Itoa(i), "", nil)
	}
	o.send(`{"type":"subscribe","channel":"other/t5"}`)
	o.expect(typeError, codeTooManyChannels) // the node's cap: 15 + 5
	if got := testutil.ToFloat64(n.ps.met.refusals.WithLabelValues(codeTooManyChannels)); got != 2 {
		t.Errorf("too_many_channels refusals %v, want 2", got)
	}

	// A channel whose last subscriber left is forgotten to make room.
	a.send(`{"type":"unsubscribe","channel":"demo/thread-9"}`)
	a.expect(typeUnsubscribed)
	o.subscribe("other/t5", "", nil)
	if got := testutil.ToFloat64(n.ps.met.channels); got != 20 {
		t.Errorf("channels gauge %v, want 20", got)
	}
}

// TestSubscribeRateLimit plays a client that sends subscribe and
// unsubscribe frames faster than its allowance: past the burst each one is
// refused with an error frame rate_limited (and not acted on); a client
// that keeps going is disconnected (close 1008), as after any 64 errors.
func TestSubscribeRateLimit(t *testing.T) {
	opts := testOptions()
	opts.SubscribeRate = 0.001 // no refill during the test
	opts.SubscribeBurst = 10
	opts.MaxSubsPerConn = 100
	n := newNode(t, opts, nil)
	c := n.mustDial()
	for i := range 20 {
		c.send(`{"type":"subscribe","channel":"demo/thread-` + strconv.Itoa(i) + `"}`)
	}
	subscribed, limited := 0, 0
	for range 20 {
		f := c.mustRead()
		switch {
		case f.Type == typeSubscribed:
			subscribed++
		case f.Type == typeError && f.Code == codeRateLimited && f.Reason != "":
			limited++
		default:
			t.Fatalf("unexpected %+v", f)
		}
	}
	if subscribed != 10 || limited != 10 {
		t.Fatalf("%d subscribed, %d rate_limited; want 10 and 10", subscribed, limited)
	}
	// Refused subscribes were not acted on.
	if got := testutil.ToFloat64(n.ps.met.subs); got != 10 {
		t.Errorf("subscriptions %v, want 10", got)
	}
	// Pings are not limited.
	c.sync()
	// Unsubscribes count too; a client that persists is cut.
	for i := range maxClientErrors {
		c.send(`{"type":"unsubscribe","channel":"demo/thread-` + strconv.Itoa(i%10) + `"}`)
	}
	ce := c.expectClose()
	if ce == nil || ce.Code != closePolicy {
		t.Fatalf("close %+v, want %d", ce, closePolicy)
	}
	if got := testutil.ToFloat64(n.ps.met.refusals.WithLabelValues(codeRateLimited)); got < maxClientErrors-10 {
		t.Errorf("rate_limited refusals %v", got)
	}
}

// TestConnsPerIPGroupsIPv6: the per-address connection limit counts an
// IPv6 /64 as one client (its owner picks among 2^64 addresses at will);
// IPv4 addresses are counted one by one.
func TestConnsPerIPGroupsIPv6(t *testing.T) {
	opts := testOptions()
	opts.MaxConnsPerIP = 2
	ps, err := New(opts, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	a := []netip.Addr{
		netip.MustParseAddr("2001:db8:1:2::1"),
		netip.MustParseAddr("2001:db8:1:2::2"),
		netip.MustParseAddr("2001:db8:1:2:ffff:ffff:ffff:ffff"),
	}
	for _, ip := range a[:2] {
		if r := ps.reserve(ip); r != "" {
			t.Fatalf("%v: %s", ip, r)
		}
	}
	if r := ps.reserve(a[2]); r != "conns_per_ip" {
		t.Errorf("third address of one /64: %q, want conns_per_ip", r)
	}
	if r := ps.reserve(netip.MustParseAddr("2001:db8:1:3::1")); r != "" {
		t.Errorf("another /64: %q", r)
	}
	ps.release(a[0])
	if r := ps.reserve(a[2]); r != "" {
		t.Errorf("after a release: %q", r)
	}
	for _, ip := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		if r := ps.reserve(netip.MustParseAddr(ip)); r != "" {
			t.Errorf("%s: %q", ip, r)
		}
	}
}

// TestIdleChannelsEvictedOldestFirst: at the cap, the channel whose last
// subscriber left longest ago is the one forgotten; a channel that got a
// subscriber again is not idle any more.
func TestIdleChannelsEvictedOldestFirst(t *testing.T) {
	opts := testOptions()
	opts.MaxChannels = 3
	n := newNode(t, opts, nil)
	c := n.mustDial()
	for _, th := range []string{"a", "b", "c"} {
		c.subscribe("demo/thread-"+th, "", nil)
		c.send(`{"type":"unsubscribe","channel":"demo/thread-` + th + `"}`)
		c.expect(typeUnsubscribed)
	}
	c.subscribe("demo/thread-a", "", nil) // a is busy again: b is now the oldest idle
	c.subscribe("demo/thread-d", "", nil)
	kept := func(th string) bool {
		n.ps.chMu.RLock()
		defer n.ps.chMu.RUnlock()
		return n.ps.channels["demo/thread-"+th] != nil
	}
	for th, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		if kept(th) != want {
			t.Errorf("channel %s kept: %v, want %v", th, kept(th), want)
		}
	}
}
