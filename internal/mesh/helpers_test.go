package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/nodemap"
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
	reg  *prometheus.Registry
	logs *logBuffer
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

// freeAddr finds a port free for both TCP and UDP on ip.
func freeAddr(t testing.TB, ip string) string {
	t.Helper()
	for range 50 {
		tl, err := net.Listen("tcp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket("udp", fmt.Sprintf("%s:%d", ip, port))
		tl.Close()
		if err != nil {
			continue
		}
		ul.Close()
		return fmt.Sprintf("%s:%d", ip, port)
	}
	t.Fatal("no free port")
	return ""
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
		NodeID:        id,
		Region:        "region-" + id,
		Lat:           10.5,
		Lon:           -20.25,
		PublicIPv4:    netip.MustParseAddr(ip),
		Tags:          []string{"edge"},
		BindAddr:      freeAddr(c.t, ip),
		LinkAddr:      freeAddr(c.t, ip),
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
	reg := prometheus.NewRegistry()
	logs := &logBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if testing.Verbose() && os.Getenv("MESH_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	m, err := New(opts, logger, reg)
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
	return &testNode{Mesh: m, opts: opts, reg: reg, logs: logs}
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

// metricValue sums the samples of a metric family whose labels include all
// of labels.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			sum += value(m)
		}
	}
	return sum
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// logBuffer collects log output for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
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
