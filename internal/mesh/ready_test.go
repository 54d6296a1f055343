package mesh

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/edgenode/edgenode/internal/nodemap"
)

func TestMetaNotReadyRoundTripAndOldNodes(t *testing.T) {
	m := sampleMeta()
	m.NotReady = "mongo replication: 12 ops of b waiting for 4s (max_lag 2s)"
	b, err := encodeMeta(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeMeta(b)
	if err != nil || got.NotReady != m.NotReady {
		t.Fatalf("round trip: %q, %v", got.NotReady, err)
	}
	// A node of an older version sends no reason: it is ready, as before.
	m.NotReady = ""
	b, _ = encodeMeta(m)
	if got, err := decodeMeta(b); err != nil || got.NotReady != "" {
		t.Fatalf("no field: %q, %v", got.NotReady, err)
	}
	// An empty reason would read as "ready" to some and as a reason to
	// others: refused.
	empty := append(b[:len(b):len(b)], fNotReady, 0)
	if _, err := decodeMeta(empty); err == nil {
		t.Error("an empty not-ready reason was accepted")
	}
}

// TestMetaNotReadyIsShortenedToFit: a long reason on a node whose other
// fields nearly fill memberlist's 512 bytes is cut to what fits, never to
// nothing, and never splits a character.
func TestMetaNotReadyIsShortenedToFit(t *testing.T) {
	m := Meta{ID: "n", State: MetaAlive, Link: netip.MustParseAddrPort("10.0.0.1:7947")}
	for i := 0; ; i++ {
		m.Tags = append(m.Tags, strings.Repeat(string(rune('a'+i)), 60))
		if b, err := encodeMeta(m); err != nil || len(b) > MetaMaxSize-40 {
			m.Tags = m.Tags[:len(m.Tags)-1]
			break
		}
	}
	m.NotReady = strings.Repeat("é", 40) // 80 bytes, more than a field holds
	b, err := encodeMetaFit(m, MetaMaxSize)
	if err != nil || len(b) > MetaMaxSize {
		t.Fatalf("%d bytes, %v", len(b), err)
	}
	got, err := decodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.NotReady == "" || !utf8.ValidString(got.NotReady) || !strings.HasPrefix(m.NotReady, got.NotReady) {
		t.Errorf("shortened reason %q", got.NotReady)
	}
	// With no room at all it is an error, never a silent "ready".
	if _, err := encodeMetaFit(m, 10); !errors.Is(err, errMetaTooLarge) {
		t.Errorf("no room: %v", err)
	}
	if got := clipUTF8("\xff\xfe", 64); got == "" || !utf8.ValidString(got) {
		t.Errorf("invalid UTF-8 clipped to %q", got)
	}
	if got := clipUTF8("日本", 2); got == "" {
		t.Error("a reason clipped inside its first character became empty")
	}
}

func TestOptionsKeepRoomForANotReadyReason(t *testing.T) {
	c := newCluster(t)
	o := c.options("a")
	// Tags that fill the metadata but for the room kept for the load and
	// a reason.
	for i := 0; ; i++ {
		o.Tags = append(o.Tags, strings.Repeat(string(rune('a'+i)), 40))
		r, err := o.resolve()
		if err != nil {
			break
		}
		md := r.meta(1, true)
		md.NotReady = strings.Repeat("x", notReadyRoom)
		if b, err := encodeMeta(md); err != nil || len(b) > MetaMaxSize {
			t.Fatalf("options accepted with %d tags, but a reason does not fit: %d bytes, %v", len(o.Tags), len(b), err)
		}
	}
}

func readyOf(id string, ready bool, reason string) func(*nodemap.Map) bool {
	return func(mp *nodemap.Map) bool {
		n, ok := mp.Node(id)
		return ok && n.Ready == ready && n.NotReady == reason
	}
}

// TestReadinessReachesEveryNode: real meshes on loopback. A node that says
// it is not ready shows so, with its reason, in its own map at once and in
// every peer's map soon after; saying it is ready again brings it back;
// draining is never ready.
func TestReadinessReachesEveryNode(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b", "c")
	ids := []string{"a", "b", "c"}
	for _, n := range nodes {
		waitMap(t, n, settle, "3 alive", allState(ids, nodemap.Alive))
		waitMap(t, n, settle, "3 ready", func(mp *nodemap.Map) bool {
			for _, id := range ids {
				if n, ok := mp.Node(id); !ok || !n.Ready {
					return false
				}
			}
			return true
		})
	}
	c3 := nodes[2]
	const why = "mongo replication: behind"
	if err := c3.SetReadiness(context.Background(), why); err != nil {
		t.Fatal(err)
	}
	if mp, _ := c3.Current(); !readyOf("c", false, why)(mp) {
		n, _ := mp.Node("c")
		t.Errorf("own map right after SetReadiness: %+v", n)
	}
	for _, n := range nodes {
		waitMap(t, n, settle, n.opts.NodeID+" sees c not ready", readyOf("c", false, why))
	}
	if mp, _ := nodes[0].Current(); true {
		if n, _ := mp.Node("c"); !n.Serving() {
			t.Errorf("not ready must not mean not serving (DNS falls back to such nodes): %+v", n)
		}
	}
	if err := c3.SetReadiness(context.Background(), ""); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitMap(t, n, settle, n.opts.NodeID+" sees c ready again", readyOf("c", true, ""))
	}
	if err := nodes[1].Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitMap(t, n, settle, n.opts.NodeID+" sees b draining, not ready", readyOf("b", false, "draining"))
	}
}
