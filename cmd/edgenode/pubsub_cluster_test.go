package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/testkit"
)

// Pubsub between real node processes: publishes routed to the nodes with
// subscribers only, the promise around a new subscription, resuming on
// another node after kill -9, and relays around a cut link (network
// namespaces and nftables rules made by the test).

// psPosition is a position as the wire has it.
type psPosition struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}

type psFrame struct {
	Type      string          `json:"type"`
	Channel   string          `json:"channel"`
	Code      string          `json:"code"`
	Position  *psPosition     `json:"position"`
	Recovered *int            `json:"recovered"`
	Data      json.RawMessage `json:"data"`
}

// streams reads a position's token: "{stream}.{seq}" joined by '_' ("0"
// for none), then "~{unix seconds}" (the pubsub package doc).
func (p *psPosition) streams(t testing.TB) map[string]uint64 {
	t.Helper()
	v, _, _ := strings.Cut(p.Epoch, "~")
	out := map[string]uint64{}
	if v == "0" {
		return out
	}
	for e := range strings.SplitSeq(v, "_") {
		sid, seq, ok := strings.Cut(e, ".")
		n, err := strconv.ParseUint(seq, 10, 64)
		if !ok || err != nil {
			t.Fatalf("bad position %q", p.Epoch)
		}
		out[sid] = n
	}
	return out
}

type psClient struct {
	t  testing.TB
	ws *websocket.Conn
}

func dialPubSub(t testing.TB, https string) *psClient {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, HandshakeTimeout: 10 * time.Second}
	ws, _, err := d.Dial("wss://"+https+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	return &psClient{t: t, ws: ws}
}

// read returns the next frame, waiting up to d.
func (c *psClient) read(d time.Duration) (psFrame, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(d))
	var f psFrame
	err := c.ws.ReadJSON(&f)
	return f, err
}

func (c *psClient) subscribe(channel string, since *psPosition) psFrame {
	c.t.Helper()
	m := map[string]any{"type": "subscribe", "channel": channel}
	if since != nil {
		m["since"] = since
	}
	if err := c.ws.WriteJSON(m); err != nil {
		c.t.Fatal(err)
	}
	f, err := c.read(20 * time.Second)
	if err != nil || f.Type != "subscribed" {
		c.t.Fatalf("subscribe %s: %+v %v", channel, f, err)
	}
	return f
}

// expect reads the next frame within d and checks it is message data.
func (c *psClient) expect(data string, d time.Duration) psFrame {
	c.t.Helper()
	f, err := c.read(d)
	if err != nil || f.Type != "message" || string(f.Data) != data {
		c.t.Fatalf("want message %s within %v, got %+v %s %v", data, d, f, f.Data, err)
	}
	return f
}

// publishAt publishes on node p's admin API and returns the position.
func publishAt(t testing.TB, p *nodeProc, token, channel, data string) psPosition {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+p.admin+"/v1/publish",
		strings.NewReader(`{"channel":"`+channel+`","data":`+data+`}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var r struct{ Position psPosition }
	if resp.StatusCode != 200 || json.Unmarshal(b, &r) != nil {
		t.Fatalf("publish on %s: %d %s", p.admin, resp.StatusCode, b)
	}
	return r.Position
}

// metricSum adds up the series of metric name on the node's /metrics whose
// labels include labels (name, value pairs).
func metricSum(t testing.TB, admin, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("metrics of %s: %v", admin, err)
	}
	sum := 0.0
	mf := fams[name]
	if mf == nil {
		return 0
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		}
	}
	return sum
}

// waitPubSubPaths waits until every node's pubsub heartbeats say its
// direct path to every other node works.
func waitPubSubPaths(t *testing.T, nodes []*nodeProc) {
	t.Helper()
	testkit.WaitFor(t, 60*time.Second, "pubsub direct paths between every pair of nodes", func() bool {
		for _, p := range nodes {
			if metricSum(t, p.admin, "edgenode_pubsub_peer_direct") != float64(len(nodes)-1) {
				return false
			}
		}
		return true
	})
}

// A publish on a channel with subscribers on 2 of 5 nodes is sent to
// those 2 only; and a subscriber that subscribes while messages are being
// published gets every message after its "subscribed" position.
func TestClusterPubSubInterest(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	c := newCluster(t, 5, "")
	c.startAll()
	waitPubSubPaths(t, c.nodes)
	token := adminTokenOf(t, c.nodes[0])

	const ch, marker = "demo/thread-interest", "demo/thread-marker"
	subs := []*psClient{dialPubSub(t, c.nodes[1].https), dialPubSub(t, c.nodes[2].https)}
	for _, s := range subs {
		s.subscribe(ch, nil)
	}
	var markers []*psClient
	for _, i := range []int{0, 3, 4} {
		m := dialPubSub(t, c.nodes[i].https)
		m.subscribe(marker, nil)
		markers = append(markers, m)
	}
	bytesBefore := metricSum(t, c.nodes[0].admin, "edgenode_mesh_link_bytes_total", "topic", "pubsub", "direction", "out")
	const m = 40
	for i := 1; i <= m; i++ {
		publishAt(t, c.nodes[0], token, ch, strconv.Itoa(i))
	}
	for i := 1; i <= m; i++ {
		for _, s := range subs {
			s.expect(strconv.Itoa(i), 20*time.Second)
		}
	}
	bytesOut := metricSum(t, c.nodes[0].admin, "edgenode_mesh_link_bytes_total", "topic", "pubsub", "direction", "out") - bytesBefore
	// Published after them on node1: once node4 and node5 have it, what
	// node1 sent them before has arrived (one ordered stream per topic).
	publishAt(t, c.nodes[0], token, marker, `"end"`)
	for _, s := range markers {
		s.expect(`"end"`, 20*time.Second)
	}
	for i, want := range []float64{0, m, m, 1, 1} {
		if i == 0 {
			continue
		}
		peer := fmt.Sprintf("node%d", i+1)
		if got := metricSum(t, c.nodes[0].admin, "edgenode_pubsub_peer_sent_total", "peer", peer); got != want {
			t.Errorf("node1 sent %v messages to %s, want %v", got, peer, want)
		}
	}
	for _, i := range []int{3, 4} {
		if got := metricSum(t, c.nodes[i].admin, "edgenode_pubsub_peer_received_total", "result", "unwanted"); got != 0 {
			t.Errorf("node%d received %v messages of a channel nobody there follows", i+1, got)
		}
	}
	t.Logf("node1 wrote %.0f bytes on its pubsub links for %d publishes to 2 of 4 peers: %.0f bytes per publish", bytesOut, m, bytesOut/m)

	// Subscribers joining while node1 publishes, on nodes that did not
	// follow the channel yet and on nodes that did.
	const busy, total = "demo/thread-busy", 150
	first := publishAt(t, c.nodes[0], token, busy, "0")
	var sid string
	for s := range first.streams(t) {
		sid = s // the channel's only stream: node1's, seq = data + 1
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for k := 0; k < 8; k++ {
		cl := dialPubSub(t, c.nodes[1+k%4].https)
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(k) * 60 * time.Millisecond)
			if err := cl.ws.WriteJSON(map[string]any{"type": "subscribe", "channel": busy}); err != nil {
				errs <- err
				return
			}
			f, err := cl.read(20 * time.Second)
			if err != nil || f.Type != "subscribed" {
				errs <- fmt.Errorf("subscriber %d: %+v %v", k, f, err)
				return
			}
			next := f.Position.streams(t)[sid] + 1
			for next <= total {
				f, err := cl.read(20 * time.Second)
				if err != nil || f.Type != "message" || string(f.Data) != strconv.FormatUint(next-1, 10) || f.Position.streams(t)[sid] != next {
					errs <- fmt.Errorf("subscriber %d on node%d: want seq %d, got %+v %s %v", k, 2+k%4, next, f, f.Data, err)
					return
				}
				next++
			}
		}()
	}
	for i := 1; i < total; i++ {
		publishAt(t, c.nodes[0], token, busy, strconv.Itoa(i))
		time.Sleep(3 * time.Millisecond)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// kill -9 the node a subscriber is on: it reconnects to another node with
// its last position and receives exactly the messages published
// meanwhile, without must_reload.
func TestClusterPubSubResumeAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	c := newCluster(t, 3, "")
	c.startAll()
	waitPubSubPaths(t, c.nodes)
	token := adminTokenOf(t, c.nodes[0])
	const ch = "demo/thread-resume"

	s := dialPubSub(t, c.nodes[1].https)
	s.subscribe(ch, nil)
	var last psPosition
	for i := 1; i <= 3; i++ {
		publishAt(t, c.nodes[0], token, ch, strconv.Itoa(i))
		last = *s.expect(strconv.Itoa(i), 20*time.Second).Position
	}
	c.nodes[1].signal(syscall.SIGKILL)
	c.nodes[1].wait(10 * time.Second)
	for i := 4; i <= 7; i++ {
		publishAt(t, c.nodes[0], token, ch, strconv.Itoa(i))
	}
	s = dialPubSub(t, c.nodes[2].https)
	sub := s.subscribe(ch, &last)
	if sub.Recovered == nil || *sub.Recovered != 4 || sub.Position.Offset != 7 {
		t.Fatalf("resumed on node3: %+v", sub)
	}
	for i := 4; i <= 7; i++ {
		if f := s.expect(strconv.Itoa(i), 20*time.Second); f.Position.Offset != uint64(i) {
			t.Fatalf("replayed %+v", f)
		}
	}
	publishAt(t, c.nodes[0], token, ch, "8")
	s.expect("8", 20*time.Second)
	if got := metricSum(t, c.nodes[2].admin, "edgenode_pubsub_recoveries_total", "result", "must_reload"); got != 0 {
		t.Errorf("must_reload counted %v on node3", got)
	}
}

// psNet is three network namespaces on a bridge of their own (the mesh)
// plus a link from this namespace to each (admin and HTTPS), with host
// addresses apart from the replication tests', so both can run at once.
type psNet struct {
	t    *testing.T
	sw   string
	ns   []string
	slot int
}

func setupPSNet(t *testing.T, n int) *psNet {
	t.Helper()
	pn := &psNet{t: t, slot: (os.Getpid() + int(nsNets.Load())) % 40}
	pn.sw, pn.ns = buildNSNet(t, n, "p", "p", pn.meshIP, pn.hostIP, pn.mgmtIP)
	return pn
}

func (n *psNet) meshIP(i int) string { return fmt.Sprintf("10.88.1.%d", i+1) }
func (n *psNet) hostIP(i int) string { return fmt.Sprintf("10.89.%d.%d", n.slot, 4*i+1) }
func (n *psNet) mgmtIP(i int) string { return fmt.Sprintf("10.89.%d.%d", n.slot, 4*i+2) }

// cutLink drops the mesh link traffic (QUIC, UDP 7947) between nodes i and
// j both ways, with an nftables table in i's namespace; on false removes it.
func (n *psNet) cutLink(i, j int, on bool) {
	n.t.Helper()
	if !on {
		runCmd(n.t, "ip", "netns", "exec", n.ns[i], "nft", "delete", "table", "inet", "pscut")
		return
	}
	rules := fmt.Sprintf(`table inet pscut {
	chain in { type filter hook input priority 0; policy accept; ip saddr %[1]s udp sport 7947 drop; }
	chain out { type filter hook output priority 0; policy accept; ip daddr %[1]s udp dport 7947 drop; }
}
`, n.meshIP(j))
	cmd := exec.Command("ip", "netns", "exec", n.ns[i], "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("nft: %v\n%s", err, out)
	}
}

// node1 and node2 cannot reach each other over their mesh link; node3
// reaches both: a publish on node1 reaches a subscriber on node2 through
// node3 within a second, and a write on node1 is read on node2 through
// node3 (its ops relayed); after the heal nothing is repeated or lost.
func TestClusterRelayAroundCut(t *testing.T) {
	needNetns(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nftables (nft)")
	}
	pn := setupPSNet(t, 3)
	c := nsCluster(t, pn, 3, true)
	for i := range 3 {
		p := *c.nodes[i]
		c.nodes[i] = startNodeIn(t, pn.ns[i], c.cfgs[i], &p)
	}
	waitPubSubPaths(t, c.nodes)
	waitWritable(t, c, 60*time.Second, 0, 1, 2)
	ctx := context.Background()
	counter := func(i int) *mongo.Collection { return mongoClient(t, c.nodes[i]).Database("app").Collection("cut") }
	on1, on2, on3 := counter(0), counter(1), counter(2)
	inc := func() {
		t.Helper()
		if _, err := on1.UpdateOne(ctx, bson.D{{Key: "_id", Value: "x"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}, options.UpdateOne().SetUpsert(true)); err != nil {
			t.Fatal(err)
		}
	}
	readN := func(coll *mongo.Collection) int64 {
		var d struct{ N int64 }
		if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "x"}}).Decode(&d); err != nil {
			return -1
		}
		return d.N
	}
	incs := int64(1)
	inc()
	testkit.WaitFor(t, 20*time.Second, "node2 to read node1's first write", func() bool { return readN(on2) == 1 })
	token := adminTokenOf(t, c.nodes[0])
	const ch = "demo/thread-cut"
	sub := dialPubSub(t, c.nodes[1].https)
	sub.subscribe(ch, nil)
	n := 0
	pub := func() string {
		n++
		publishAt(t, c.nodes[0], token, ch, strconv.Itoa(n))
		return strconv.Itoa(n)
	}
	sub.expect(pub(), 20*time.Second)

	pn.cutLink(0, 1, true)
	t.Log("node1 <-> node2 link traffic dropped both ways")
	cutAt := time.Now()
	intoCut := pub() // sent before the cut is noticed: resent through node3
	sub.expect(intoCut, 20*time.Second)
	t.Logf("MEASURE message published right after the cut began: on node2 %v after the cut (resent through node3 once the cut is noticed)",
		time.Since(cutAt).Round(time.Millisecond))
	testkit.WaitFor(t, 20*time.Second, "node1 and node2 to see their direct path down", func() bool {
		return metricSum(t, c.nodes[0].admin, "edgenode_pubsub_peer_direct", "peer", "node2") == 0 &&
			metricSum(t, c.nodes[1].admin, "edgenode_pubsub_peer_direct", "peer", "node1") == 0
	})
	var worst time.Duration
	for range 5 {
		// Through node3, within a second of the publish.
		start := time.Now()
		sub.expect(pub(), time.Second)
		worst = max(worst, time.Since(start))
	}
	t.Logf("MEASURE publish on node1 -> websocket on node2 through node3: worst of 5 %v (publish request included)", worst.Round(100*time.Microsecond))
	worst = 0
	for range 5 {
		start := time.Now()
		inc()
		incs++
		testkit.WaitFor(t, 20*time.Second, "node2 to read node1's write through node3", func() bool { return readN(on2) == incs })
		worst = max(worst, time.Since(start))
	}
	t.Logf("MEASURE $inc on node1 -> read on node2 with the ops relayed by node3: worst of 5 %v (write and polling reads included; the issue's bound: 2 s)", worst.Round(time.Millisecond))
	st, err := replStatus(c.nodes[1])
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range st.Origins {
		if o.Node == "node1" && o.Via != "node3" {
			t.Errorf("node2's status says node1's ops come via %q, want node3", o.Via)
		}
	}
	if got := metricSum(t, c.nodes[2].admin, "edgenode_mongo_repl_ops_relayed_total", "peer", "node2"); got < 5 {
		t.Errorf("node3 relayed %v of node1's ops to node2", got)
	}
	// The status page (issue 16, item 8): node2's row says how node1's
	// data reaches it.
	testkit.WaitFor(t, 20*time.Second, "node2's status page to show node1's data coming through node3", func() bool {
		resp, err := http.Get("http://" + c.nodes[1].admin + "/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `"routes":{"node1":"via node3"}`)
	})
	if got := metricSum(t, c.nodes[0].admin, "edgenode_pubsub_peer_sent_total", "peer", "node2", "path", "relay"); got < 5 {
		t.Errorf("node1 counted %v messages relayed to node2", got)
	}
	if got := metricSum(t, c.nodes[2].admin, "edgenode_pubsub_relayed_total"); got < 5 {
		t.Errorf("node3 relayed %v messages", got)
	}

	pn.cutLink(0, 1, false)
	t.Log("healed")
	testkit.WaitFor(t, 60*time.Second, "node1 and node2 direct again", func() bool {
		return metricSum(t, c.nodes[0].admin, "edgenode_pubsub_peer_direct", "peer", "node2") == 1 &&
			metricSum(t, c.nodes[1].admin, "edgenode_pubsub_peer_direct", "peer", "node1") == 1
	})
	for range 5 {
		sub.expect(pub(), 20*time.Second)
	}
	inc()
	incs++
	testkit.WaitFor(t, 30*time.Second, "every node to read every write once after the heal", func() bool {
		return readN(on1) == incs && readN(on2) == incs && readN(on3) == incs
	})
	// Nothing repeated: a protocol ping comes back before anything else.
	if err := sub.ws.WriteJSON(map[string]string{"type": "ping", "id": "end"}); err != nil {
		t.Fatal(err)
	}
	if f, err := sub.read(20 * time.Second); err != nil || f.Type != "pong" {
		t.Fatalf("after the last message: %+v %s %v", f, f.Data, err)
	}
}
