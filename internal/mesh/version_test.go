package mesh

import (
	"crypto/tls"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
)

func TestALPNNegotiationRule(t *testing.T) {
	// What the TLS server picks: the first of its list the client offers.
	pick := func(server, client int) int {
		for _, s := range offered(server) {
			for _, c := range offered(client) {
				if s == c {
					v, _ := parseALPN(s)
					return v
				}
			}
		}
		return 0
	}
	for a := 1; a <= 5; a++ {
		for b := 1; b <= 5; b++ {
			got := pick(a, b)
			want := 0
			if compatible(a, b) {
				want = min(a, b)
			}
			if got != want {
				t.Errorf("server %d, client %d: negotiated %d, want %d", a, b, got, want)
			}
		}
	}
	// Version 1 is what nodes from before the negotiation offer.
	if got := offered(1); len(got) != 1 || got[0] != "edgenode-mesh/1" {
		t.Errorf("version 1 offers %q", got)
	}
	for _, bad := range []string{"h3", "edgenode-mesh/", "edgenode-mesh/0", "edgenode-mesh/01", "edgenode-mesh/-1", "edgenode-mesh/x"} {
		if v, ok := parseALPN(bad); ok {
			t.Errorf("parseALPN(%q) = %d", bad, v)
		}
	}
}

// Four in-process nodes of versions 1 (the nodes from before versions were
// negotiated, whose ALPN and stream headers version 1 plays exactly), 2,
// 3 and 4. Pairs one version apart link and exchange messages on the lower
// version; pairs further apart are refused on both sides, counted, logged
// with the peer, both versions and what to do, and shown on the node map.
func TestProtocolVersionsOneApart(t *testing.T) {
	c := newCluster(t)
	vers := map[string]int{"a": 1, "b": 2, "c": 3, "d": 4}
	ids := []string{"a", "b", "c", "d"}
	nodes := map[string]*testNode{}
	inboxes := map[string]*inbox{}
	for _, id := range ids {
		o := c.options(id)
		o.Protocol = vers[id]
		nodes[id] = c.start(o)
		inboxes[id] = newInbox()
		nodes[id].Handle("t", inboxes[id].handler("t"))
	}
	for _, id := range ids {
		waitMap(t, nodes[id], settle, "4 alive", allState(ids, nodemap.Alive))
	}
	for _, x := range ids {
		for _, y := range ids {
			if x == y {
				continue
			}
			if compatible(vers[x], vers[y]) {
				waitMap(t, nodes[x], settle, y+" verified by "+x, verified(y))
				want := min(vers[x], vers[y])
				if v, ok := nodes[x].PeerProtocol(y); !ok || v != want {
					t.Errorf("%s's link to %s: protocol %d %v, want %d", x, y, v, ok, want)
				}
				msg := fmt.Sprintf("%s->%s", x, y)
				testkit.WaitFor(t, settle, "message "+msg, func() bool {
					_ = nodes[x].Send(y, "t", []byte(msg))
					for _, r := range inboxes[y].snapshot() {
						if r.from == x && string(r.msg) == msg {
							return true
						}
					}
					return false
				})
				continue
			}
			waitMap(t, nodes[x], settle, y+" refused by "+x, func(mp *nodemap.Map) bool {
				n, ok := mp.Node(y)
				return ok && !n.Verified && strings.Contains(n.Unverified, "mesh protocol")
			})
			if _, ok := nodes[x].PeerProtocol(y); ok {
				t.Errorf("%s has a link to %s, versions %d and %d", x, y, vers[x], vers[y])
			}
			line := fmt.Sprintf("peer=%s", y)
			testkit.WaitFor(t, settle, x+" logs the refusal of "+y, func() bool {
				for _, l := range strings.Split(nodes[x].logs.String(), "\n") {
					if strings.Contains(l, "mesh protocol versions more than one apart") && strings.Contains(l, line) &&
						strings.Contains(l, fmt.Sprintf("peer_protocol=%d", vers[y])) && strings.Contains(l, fmt.Sprintf("local_protocol=%d", vers[x])) &&
						strings.Contains(l, "upgrade") {
						return true
					}
				}
				return false
			})
			if n := testutil.ToFloat64(nodes[x].met.refused.WithLabelValues("protocol_version")); n < 1 {
				t.Errorf("%s counted %v protocol_version refusals", x, n)
			}
		}
	}
	// A node of version 4 dialing b (version 2) from an address no member
	// advertises: the handshake itself refuses it, whoever it is.
	cert, err := tls.LoadX509KeyPair(nodes["d"].opts.CertFile, nodes["d"].opts.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	before := testutil.ToFloat64(nodes["b"].met.refused.WithLabelValues("protocol_version"))
	if conn := rawDialALPN(t, c, nodes["b"].opts.LinkAddr, cert, offered(4)); conn != nil {
		t.Error("the handshake offering versions 4 and 3 to a node of version 2 succeeded")
	}
	if after := testutil.ToFloat64(nodes["b"].met.refused.WithLabelValues("protocol_version")); after != before+1 {
		t.Errorf("refusals counted by b: %v -> %v", before, after)
	}
	if !strings.Contains(nodes["b"].logs.String(), "action=\"peer at 127.") {
		t.Error("b did not log the refused handshake")
	}
	// Nothing crossed a refused pair.
	for _, y := range ids {
		for _, r := range inboxes[y].snapshot() {
			if !compatible(vers[r.from], vers[y]) {
				t.Errorf("%s got %q from %s, versions %d and %d", y, r.msg, r.from, vers[y], vers[r.from])
			}
		}
	}
}
