package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// cluster is a set of in-process nodes with a shared CA and gossip key.
type cluster struct {
	t     testing.TB
	dir   string
	caDir string
	mu    sync.Mutex
	nodes map[string]*testNode
	seed  string
}

type testNode struct {
	*Mesh
	opts Options
	logs *testkit.LogBuffer
}

var ipCounter atomic.Uint32

func newCluster(t testing.TB) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, caDir: filepath.Join(dir, "ca"), nodes: map[string]*testNode{}}
	if err := pki.InitCA(c.caDir); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cluster) ip() string {
	// Spread nodes over 127.0.0.x so that every node has its own address,
	// as on real machines. x starts at 20 to stay clear of the addresses
	// scripts/cluster uses.
	n := ipCounter.Add(1)
	return fmt.Sprintf("127.0.%d.%d", 1+n/200, 20+n%200)
}

// options makes Options for a new node id with fresh addresses and a cert
// from the cluster CA.
func (c *cluster) options(id string) Options {
	c.t.Helper()
	ip := c.ip()
	certDir := filepath.Join(c.dir, "certs")
	certPath := filepath.Join(certDir, id+".crt")
	keyPath := filepath.Join(certDir, id+".key")
	if _, err := os.Stat(certPath); err != nil {
		if _, _, err := pki.IssueNode(c.caDir, id, certDir, []string{ip}); err != nil {
			c.t.Fatal(err)
		}
	}
	return Options{
		NodeID:     id,
		Region:     "region-" + id,
		Lat:        10.5,
		Lon:        -20.25,
		PublicIPv4: netip.MustParseAddr(ip),
		Tags:       []string{"edge"},
		// Gossip takes UDP and TCP, the links UDP: ports free for both.
		BindAddr:      net.JoinHostPort(ip, strconv.Itoa(testkit.FreeUDPTCPPort(c.t, ip))),
		LinkAddr:      net.JoinHostPort(ip, strconv.Itoa(testkit.FreeUDPTCPPort(c.t, ip))),
		GossipKeys:    [][]byte{testKey},
		CACertFile:    filepath.Join(c.caDir, pki.CACertName),
		CertFile:      certPath,
		KeyFile:       keyPath,
		Profile:       "local",
		BinaryVersion: "test-1",
		ConfigVersion: "cfg-1",
	}
}

// start creates and starts a node. The first node becomes the seed of the
// later ones.
func (c *cluster) start(opts Options) *testNode {
	c.t.Helper()
	c.mu.Lock()
	if c.seed == "" {
		c.seed = opts.BindAddr
	}
	if opts.Seeds == nil {
		opts.Seeds = []string{c.seed}
	}
	c.mu.Unlock()
	n := c.startNoSeedUpdate(opts)
	c.mu.Lock()
	c.nodes[opts.NodeID] = n
	c.mu.Unlock()
	return n
}

func (c *cluster) startNoSeedUpdate(opts Options) *testNode {
	c.t.Helper()
	logger, logs := testkit.Logger(c.t)
	if testing.Verbose() && os.Getenv("MESH_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	m, err := New(opts, logger, prometheus.NewRegistry())
	if err != nil {
		c.t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = m.Leave(ctx)
	})
	return &testNode{Mesh: m, opts: opts, logs: logs}
}

func (c *cluster) startN(ids ...string) []*testNode {
	c.t.Helper()
	var out []*testNode
	for _, id := range ids {
		out = append(out, c.start(c.options(id)))
	}
	return out
}

// waitMap waits until cond holds for n's current map.
func waitMap(t testing.TB, n nodemap.Source, timeout time.Duration, what string, cond func(*nodemap.Map) bool) *nodemap.Map {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		mp, ch := n.Current()
		if cond(mp) {
			return mp
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s; map v%d: %s", timeout, what, mp.Version, describe(mp))
			return nil
		}
	}
}

func describe(mp *nodemap.Map) string {
	var b strings.Builder
	for _, n := range mp.Nodes {
		fmt.Fprintf(&b, "%s=%s ", n.ID, n.State)
	}
	return b.String()
}

func allState(ids []string, st nodemap.State) func(*nodemap.Map) bool {
	return func(mp *nodemap.Map) bool {
		if len(mp.Nodes) != len(ids) {
			return false
		}
		for _, id := range ids {
			n, ok := mp.Node(id)
			if !ok || n.State != st {
				return false
			}
		}
		return true
	}
}

func stateOf(id string, st nodemap.State) func(*nodemap.Map) bool {
	return func(mp *nodemap.Map) bool {
		n, ok := mp.Node(id)
		return ok && n.State == st
	}
}

func verified(id string) func(*nodemap.Map) bool {
	return func(mp *nodemap.Map) bool {
		n, ok := mp.Node(id)
		return ok && n.Verified && n.Unverified == ""
	}
}

func absent(id string) func(*nodemap.Map) bool {
	return func(mp *nodemap.Map) bool {
		_, ok := mp.Node(id)
		return !ok
	}
}

// Metrics are read from a node's own collectors with testutil.

// peerMetric is n's per-peer series desc (descLinkUp, descQueueDepth,
// descPeerDrops) for peer, 0 when n does not know peer.
func peerMetric(n *testNode, desc *prometheus.Desc, peer string) float64 {
	var one []peerStat
	for _, p := range n.links.stats() {
		if p.id == peer {
			one = append(one, p)
		}
	}
	if len(one) == 0 {
		return 0
	}
	return testutil.ToFloat64(onlyDesc{c: &peerCollector{peers: func() []peerStat { return one }}, desc: desc})
}

// linksUp is how many of n's peer links are up: the sum of
// edgenode_mesh_link_up over n's peers.
func linksUp(n *testNode) float64 {
	sum := 0.0
	for _, p := range n.links.stats() {
		sum += peerMetric(n, descLinkUp, p.id)
	}
	return sum
}

// onlyDesc passes on the metrics of c with one Desc, so that testutil can
// read one family of a collector that reports several.
type onlyDesc struct {
	c    prometheus.Collector
	desc *prometheus.Desc
}

func (o onlyDesc) Describe(ch chan<- *prometheus.Desc) { ch <- o.desc }

func (o onlyDesc) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric)
	go func() {
		o.c.Collect(all)
		close(all)
	}()
	for m := range all {
		if m.Desc() == o.desc {
			ch <- m
		}
	}
}

// inbox collects messages delivered to a handler.
type inbox struct {
	mu   sync.Mutex
	msgs []received
	ch   chan struct{}
}

type received struct {
	from, topic string
	msg         []byte
}

func newInbox() *inbox { return &inbox{ch: make(chan struct{}, 1)} }

func (in *inbox) handler(topic string) func(string, []byte) {
	return func(from string, msg []byte) {
		in.mu.Lock()
		in.msgs = append(in.msgs, received{from, topic, msg})
		in.mu.Unlock()
		select {
		case in.ch <- struct{}{}:
		default:
		}
	}
}

func (in *inbox) snapshot() []received {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]received(nil), in.msgs...)
}

func (in *inbox) waitCount(t testing.TB, n int, timeout time.Duration) []received {
	t.Helper()
	deadline := time.After(timeout)
	for {
		got := in.snapshot()
		if len(got) >= n {
			return got
		}
		select {
		case <-in.ch:
		case <-deadline:
			t.Fatalf("got %d messages, want %d", len(got), n)
		}
	}
}
