//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/testkit"
)

// delayNet is a namespace layout whose mesh network delays packets: each
// node's namespace has a TUN device at meshIP(i)/24, and the test
// process forwards every packet between them after the pair's one-way
// delay (testkit.DelayNet; this kernel has no sch_netem for tc netem).
// Admin, HTTPS, DNS and Mongo are on each node's management link, as in
// replNet and psNet, undelayed. With a client, this namespace gets an
// endpoint on the same network too (clientIP), so the test's own
// requests to the nodes' mesh addresses take delayed paths.
//
// The host addresses (the management links and, with a client, the mesh
// prefix in this namespace) take a slot from the process id, like psNet's,
// so that runs of other packages or worktrees at the same time do not
// collide.
type delayNet struct {
	t      *testing.T
	ns     []string
	slot   int
	client bool
	net    *testkit.DelayNet
}

func setupDelayNet(t *testing.T, n int, client bool) *delayNet {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("delayed mesh tests need TUN devices: %v", err)
	}
	dn := &delayNet{t: t, slot: (os.Getpid() + int(nsNets.Load())) % 200, client: client}
	dn.ns = buildNodeNS(t, n, nsTag("d"), dn.hostIP, dn.mgmtIP)
	var eps []testkit.DelayEndpoint
	for i := range n {
		eps = append(eps, testkit.DelayEndpoint{Netns: dn.ns[i], Addr: netip.MustParsePrefix(dn.meshIP(i) + "/24")})
	}
	if client {
		eps = append(eps, testkit.DelayEndpoint{Addr: netip.MustParsePrefix(dn.clientIP() + "/24")})
	}
	dn.net = testkit.NewDelayNet(t, eps)
	return dn
}

func (dn *delayNet) meshIP(i int) string { return fmt.Sprintf("10.76.%d.%d", dn.slot, i+1) }
func (dn *delayNet) hostIP(i int) string { return fmt.Sprintf("10.75.%d.%d", dn.slot, 4*i+1) }
func (dn *delayNet) mgmtIP(i int) string { return fmt.Sprintf("10.75.%d.%d", dn.slot, 4*i+2) }

// clientIP is this namespace's address on the mesh network (with a client).
func (dn *delayNet) clientIP() string { return fmt.Sprintf("10.76.%d.200", dn.slot) }

// clientNet is the client's /24, as the nodes' measurements key it.
func (dn *delayNet) clientNet() string { return fmt.Sprintf("10.76.%d.0/24", dn.slot) }

// clientEnd is the client's endpoint index for link.
func (dn *delayNet) clientEnd() int { return len(dn.ns) }

// link sets the one-way delay both ways between endpoints i and j (nodes
// by index; clientEnd for the client).
func (dn *delayNet) link(i, j int, d time.Duration) { dn.net.SetLinkDelay(i, j, d) }

// startIn starts every node of c in its namespace of dn.
func (dn *delayNet) startIn(c *cluster) {
	dn.t.Helper()
	for i := range c.nodes {
		p := *c.nodes[i]
		c.nodes[i] = startNodeIn(dn.t, dn.ns[i], c.cfgs[i], &p)
	}
}

// pageStatus is the snapshot the status page (/status) embeds, with the
// fields these tests read: each member's RTT estimated by the network
// coordinates, and the measured preference per client network.
type pageStatus struct {
	Members []struct {
		ID    string   `json:"id"`
		RTTMS *float64 `json:"rtt_ms"`
	} `json:"members"`
	Measured []struct {
		Network string `json:"network"`
		Nodes   []struct {
			ID string `json:"id"`
		} `json:"nodes"`
	} `json:"measured"`
}

// statusPage reads the snapshot of node p's status page.
func statusPage(p *nodeProc) (pageStatus, error) {
	var st pageStatus
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + p.admin + "/status")
	if err != nil {
		return st, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return st, err
	}
	// The page carries its first snapshot as `const first = JSON;` (one
	// line: json.Marshal writes no newlines).
	_, rest, ok := strings.Cut(string(b), "const first = ")
	js, _, ok2 := strings.Cut(rest, ";\n")
	if !ok || !ok2 {
		return st, fmt.Errorf("no snapshot in the status page")
	}
	return st, json.Unmarshal([]byte(js), &st)
}

// rtts is node p's estimated RTT to every other member, in ms (members
// without an estimate are left out).
func rtts(p *nodeProc) map[string]float64 {
	st, err := statusPage(p)
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	for _, m := range st.Members {
		if m.RTTMS != nil {
			out[m.ID] = *m.RTTMS
		}
	}
	return out
}

// delayedCluster makes n nodes on dn (mesh over the delayed network)
// with the widget's dynamic name, extra merged into every config.
func delayedCluster(t *testing.T, dn *delayNet, n int, extra string) *cluster {
	t.Helper()
	c := nsCluster(t, dn, n, false)
	for i := range c.cfgs {
		c.cfgs[i] = mergeYAML(t, c.cfgs[i], "dns: {dynamic: [{name: widget.edgenode.test., count: 3}]}\n")
		c.cfgs[i] = mergeYAML(t, c.cfgs[i], extra)
	}
	return c
}

// TestCoordinatesSeeDelay: three real nodes whose mesh runs over a
// delayed network. With every link of node3 slow (40 ms each way) and
// node1-node2 not, node1's network coordinates (shown on its status page)
// estimate node3 far and node2 near, and its DNS answer for a client of
// its own region (the test, at an address of no known place) names node2
// second, as the node closest in RTT to the first (node1). Then the delays
// change at run time (node3 fast, node2 slow): the estimates and the
// answer follow.
func TestCoordinatesSeeDelay(t *testing.T) {
	needNetns(t)
	const slow = 40 * time.Millisecond // one way: an 80 ms round trip
	dn := setupDelayNet(t, 3, false)
	c := delayedCluster(t, dn, 3, "")
	dn.link(2, 0, slow)
	dn.link(2, 1, slow)
	dn.startIn(c)
	testkit.WaitFor(t, 60*time.Second, "3 alive members", func() bool {
		st := c.states(0)
		return st["node1"] == "alive" && st["node2"] == "alive" && st["node3"] == "alive"
	})

	// follow waits until node1 estimates far above 40 ms and near below
	// 20 ms (the coordinates start at the origin and move with every
	// probe; the margins leave room for a loaded machine's scheduling),
	// and until its DNS names near second.
	follow := func(near, far int) {
		t.Helper()
		nearID, farID := fmt.Sprintf("node%d", near+1), fmt.Sprintf("node%d", far+1)
		var last map[string]float64
		testkit.WaitFor(t, 90*time.Second, "node1's estimates: "+farID+" > 40 ms, "+nearID+" < 20 ms", func() bool {
			last = rtts(c.nodes[0])
			f, okf := last[farID]
			n, okn := last[nearID]
			return okf && okn && f > 40 && n < 20
		})
		t.Logf("node1 estimates %s %.1f ms, %s %.1f ms", nearID, last[nearID], farID, last[farID])
		var order []string
		testkit.WaitFor(t, 30*time.Second, "node1's answer: node1, then "+nearID, func() bool {
			order = widgetOrder(c.nodes[0].dns)
			return len(order) == 3 && order[0] == dn.meshIP(0) && order[1] == dn.meshIP(near)
		})
		t.Logf("node1's answer: %v", order)
	}
	follow(1, 2)

	dn.link(2, 0, 0)
	dn.link(2, 1, slow)
	dn.link(1, 0, slow)
	t.Log("delays changed: node3 fast, node2 slow")
	follow(2, 1)
}
