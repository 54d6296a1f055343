// Package rum aggregates real-user measurements: round trip times that
// browsers measured from their network to the nodes (the widget's timed
// fetches of /.well-known/edgenode/rtt, posted to
// /.well-known/edgenode/beacon), kept per client network (/24, /48; see
// clientaddr.Network), shared between nodes over the mesh, and read by DNS
// to prefer, for a client's network, the node with the best measured
// median once enough samples exist.
//
// # Memory
//
// A Table keeps at most MaxNetworks networks of its own (least recently
// measured evicted first), each with at most MaxNodesPerNetwork node
// sketches of 160 bytes of weights (see sketch.go) and an id of at most
// 64 bytes: BytesPerNetwork (2.5 KiB) per network at worst, so 10,000
// networks take at most 25 MiB (a network measured by a few hundred page
// loads names two or three nodes: about 700 bytes). Each peer's last digest holds at most MaxNetworks networks
// too; digests of peers that stopped sending expire after four share
// intervals. TestMemoryBound checks the bound.
//
// # Decay
//
// Every sample starts with weight 1; weights halve every HalfLife, so a
// network's figures follow its present routing and "enough samples" means
// enough recent ones.
package rum

import (
	"context"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/clientaddr"
)

// Topic is the mesh topic of the digests.
const Topic = "rum"

// Limits and defaults.
const (
	// MaxNodesPerNetwork bounds the nodes one network keeps figures for;
	// a new node evicts the one with the least weight. A browser measures
	// two nodes per page load, so a network sees a handful at most.
	MaxNodesPerNetwork = 8
	// BytesPerNetwork is the documented worst-case size of one network
	// (sketches, ids, map and LRU overhead), checked by TestMemoryBound.
	BytesPerNetwork = 2560

	DefaultMinSamples    = 20
	DefaultHalfLife      = time.Hour
	DefaultMaxNetworks   = 10000
	DefaultShareInterval = 15 * time.Second
	// MaxMS is the largest round trip a beacon may report, in ms.
	MaxMS = 30000
)

// Options configure a Table.
type Options struct {
	// MinSamples is the decayed weight a node needs in a network before its
	// median counts. Default 20.
	MinSamples int
	// HalfLife is how long a sample takes to lose half its weight.
	// Default 1h.
	HalfLife time.Duration
	// MaxNetworks bounds the networks kept. Default 10000.
	MaxNetworks int
	// ShareInterval is how often the digest goes to the peers (and the
	// longest a change waits before DNS sees it is a second). Default 15s.
	ShareInterval time.Duration
	// Now is the clock; nil means time.Now. For tests.
	Now func() time.Time
}

// NodeMedian is one node's figures in one network.
type NodeMedian struct {
	ID       string  `json:"id"`
	MedianMS float64 `json:"median_ms"`
	Samples  float64 `json:"samples"` // decayed weight, this node's and its peers'
}

// Preference is what DNS prefers for one network: its nodes with enough
// samples, best median first.
type Preference struct {
	Network netip.Prefix `json:"network"`
	Nodes   []NodeMedian `json:"nodes"`
}

type nodeSketch struct {
	id string
	s  sketch
}

// network is one client network's sketches, decayed to at.
type network struct {
	at    time.Time
	nodes []nodeSketch
}

type remoteDigest struct {
	got  time.Time
	nets map[netip.Prefix]*network
}

type prefs struct {
	by   map[netip.Prefix][]string
	list []Preference
}

// Table is the node's aggregate. It is safe for concurrent use; Prefer
// takes no lock.
type Table struct {
	o   Options
	log *slog.Logger
	met *metrics

	mu     sync.Mutex
	local  *simplelru.LRU[netip.Prefix, *network]
	remote map[string]*remoteDigest
	dirty  bool

	pref atomic.Pointer[prefs]
	wake chan struct{}
}

// New makes a Table; it measures nothing until Record or Merge.
func New(o Options, log *slog.Logger, reg prometheus.Registerer) (*Table, error) {
	if o.MinSamples <= 0 {
		o.MinSamples = DefaultMinSamples
	}
	if o.HalfLife <= 0 {
		o.HalfLife = DefaultHalfLife
	}
	if o.MaxNetworks <= 0 {
		o.MaxNetworks = DefaultMaxNetworks
	}
	if o.ShareInterval <= 0 {
		o.ShareInterval = DefaultShareInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Table{o: o, log: log, remote: map[string]*remoteDigest{}, wake: make(chan struct{}, 1)}
	var err error
	if t.local, err = simplelru.NewLRU[netip.Prefix, *network](o.MaxNetworks, nil); err != nil {
		return nil, err
	}
	if t.met, err = newMetrics(reg); err != nil {
		return nil, err
	}
	t.pref.Store(&prefs{})
	return t, nil
}

// decay brings n's weights from n.at to now.
func (t *Table) decay(n *network, now time.Time) {
	dt := now.Sub(n.at)
	if dt <= 0 {
		return
	}
	f := float32(math.Exp2(-dt.Seconds() / t.o.HalfLife.Seconds()))
	for i := range n.nodes {
		n.nodes[i].s.scale(f)
	}
	n.at = now
}

// Sample is one measured round trip to one node.
type Sample struct {
	Node string
	MS   float64
}

// Record adds one beacon's samples, measured from the network of client.
func (t *Table) Record(client netip.Addr, samples []Sample) {
	p := clientaddr.Network(client)
	if !p.IsValid() || len(samples) == 0 {
		return
	}
	now := t.o.Now()
	t.mu.Lock()
	n, ok := t.local.Get(p)
	if !ok {
		n = &network{at: now}
		t.local.Add(p, n)
	}
	t.decay(n, now)
	for _, s := range samples {
		addSample(n, s.Node, s.MS, 1)
	}
	t.dirty = true
	t.met.networks.Set(float64(t.local.Len()))
	t.mu.Unlock()
	t.signal()
}

// addSample adds weight w at ms for node id, making room for the node if
// needed by dropping the node with the least weight.
func addSample(n *network, id string, ms float64, w float32) {
	for i := range n.nodes {
		if n.nodes[i].id == id {
			n.nodes[i].s.add(ms, w)
			return
		}
	}
	if len(n.nodes) >= MaxNodesPerNetwork {
		least, lw := 0, math.Inf(1)
		for i := range n.nodes {
			if tw := n.nodes[i].s.total(); tw < lw {
				least, lw = i, tw
			}
		}
		n.nodes = slices.Delete(n.nodes, least, least+1)
	}
	n.nodes = append(n.nodes, nodeSketch{id: id})
	n.nodes[len(n.nodes)-1].s.add(ms, w)
}

func (t *Table) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// Prefer returns the ids of the nodes measured best from a's network, best
// first, or nil when fewer than two nodes have enough samples there. The
// slice must not be modified. It takes no lock.
func (t *Table) Prefer(a netip.Addr) []string {
	p := clientaddr.Network(a)
	if !p.IsValid() {
		return nil
	}
	return t.pref.Load().by[p]
}

// Preferences lists every network with a preference, for the status page.
func (t *Table) Preferences() []Preference { return t.pref.Load().list }

// Len is the number of networks measured by this node itself.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.local.Len()
}

// Merge stores a peer's digest, replacing its previous one: each digest
// holds the peer's whole current aggregate, so nothing is counted twice.
func (t *Table) Merge(from string, b []byte) error {
	nets, err := decodeDigest(b, t.o.MaxNetworks)
	if err != nil {
		t.met.digestsBad.Inc()
		return err
	}
	now := t.o.Now()
	for _, n := range nets {
		n.at = now // peers' clocks are not trusted for age
	}
	t.mu.Lock()
	t.remote[from] = &remoteDigest{got: now, nets: nets}
	t.dirty = true
	t.mu.Unlock()
	t.signal()
	return nil
}

// Forget drops a peer's digest (it left the cluster).
func (t *Table) Forget(from string) {
	t.mu.Lock()
	if _, ok := t.remote[from]; ok {
		delete(t.remote, from)
		t.dirty = true
	}
	t.mu.Unlock()
	t.signal()
}

// Run rebuilds the preferences after changes (at most once a second) and
// hands share a digest every ShareInterval (share nil: no sharing), until
// ctx ends.
func (t *Table) Run(ctx context.Context, share func([]byte)) {
	rebuild := time.NewTicker(time.Second)
	defer rebuild.Stop()
	shareT := time.NewTicker(t.o.ShareInterval)
	defer shareT.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rebuild.C:
			t.rebuildIfDirty()
		case <-shareT.C:
			// Rebuilt even when nothing came in: decay and expiry move
			// preferences too.
			t.mu.Lock()
			t.dirty = true
			t.mu.Unlock()
			if share != nil {
				if b := t.Digest(); b != nil {
					share(b)
				}
			}
		}
	}
}

func (t *Table) rebuildIfDirty() {
	t.mu.Lock()
	dirty := t.dirty
	t.dirty = false
	t.mu.Unlock()
	if dirty {
		t.rebuild()
	}
}

// rebuild recomputes the preference of every network from the local and
// remote sketches. The result is published at once for Prefer.
func (t *Table) rebuild() {
	now := t.o.Now()
	min := float64(t.o.MinSamples)
	t.mu.Lock()
	merged := make(map[netip.Prefix]map[string]*sketch, t.local.Len())
	add := func(p netip.Prefix, n *network) {
		t.decay(n, now)
		m := merged[p]
		if m == nil {
			m = make(map[string]*sketch, len(n.nodes))
			merged[p] = m
		}
		for i := range n.nodes {
			ns := &n.nodes[i]
			s := m[ns.id]
			if s == nil {
				s = &sketch{}
				m[ns.id] = s
			}
			s.merge(&ns.s)
		}
	}
	for _, p := range t.local.Keys() {
		n, _ := t.local.Peek(p)
		add(p, n)
	}
	for from, d := range t.remote {
		if now.Sub(d.got) > 4*t.o.ShareInterval {
			delete(t.remote, from)
			continue
		}
		for p, n := range d.nets {
			add(p, n)
		}
	}
	t.met.remoteDigests.Set(float64(len(t.remote)))
	t.mu.Unlock()

	out := &prefs{by: map[netip.Prefix][]string{}}
	for p, m := range merged {
		var nodes []NodeMedian
		for id, s := range m {
			// Rounded: samples taken a moment apart have decayed a hair.
			if w := math.Round(s.total()*10) / 10; w >= min {
				nodes = append(nodes, NodeMedian{ID: id, MedianMS: s.median(), Samples: w})
			}
		}
		if len(nodes) < 2 {
			continue
		}
		slices.SortFunc(nodes, func(a, b NodeMedian) int {
			if a.MedianMS != b.MedianMS {
				return cmpFloat(a.MedianMS, b.MedianMS)
			}
			return cmpFloat(b.Samples, a.Samples)
		})
		ids := make([]string, len(nodes))
		for i, n := range nodes {
			ids[i] = n.ID
		}
		out.by[p] = ids
		out.list = append(out.list, Preference{Network: p, Nodes: nodes})
	}
	slices.SortFunc(out.list, func(a, b Preference) int { return a.Network.Addr().Compare(b.Network.Addr()) })
	t.met.preferred.Set(float64(len(out.list)))
	t.pref.Store(out)
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Digest encodes this node's own networks for its peers: those with at
// least one sample's weight, heaviest first, at most MaxNetworks and
// maxDigestBytes. Nil when there is nothing to share.
func (t *Table) Digest() []byte {
	now := t.o.Now()
	t.mu.Lock()
	type entry struct {
		p netip.Prefix
		n network
		w float64
	}
	var es []entry
	for _, p := range t.local.Keys() {
		n, _ := t.local.Peek(p)
		t.decay(n, now)
		w := 0.0
		for i := range n.nodes {
			w += n.nodes[i].s.total()
		}
		if w >= 1 {
			es = append(es, entry{p: p, n: network{nodes: slices.Clone(n.nodes)}, w: w})
		}
	}
	t.mu.Unlock()
	if len(es) == 0 {
		return nil
	}
	slices.SortFunc(es, func(a, b entry) int { return cmpFloat(b.w, a.w) })
	nets := make([]digestNet, 0, len(es))
	for _, e := range es {
		nets = append(nets, digestNet{p: e.p, nodes: e.n.nodes})
	}
	return encodeDigest(nets)
}
