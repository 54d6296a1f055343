// Package nodemap holds the live map of the cluster that the mesh publishes and
// DNS (and later the status page) reads. It is its own package so that data
// flows one way: the mesh writes maps, readers import only these types and
// never the mesh.
//
// A Map is immutable once published. A Source hands out the current Map
// together with a channel that is closed when a newer Map replaces it, so a
// reader can wait for the next change without polling and without a callback
// into its own code.
package nodemap

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/serf/coordinate"
)

// State is what a node says about itself or what failure detection says of it.
type State uint8

const (
	// Alive nodes take new traffic.
	Alive State = iota + 1
	// Draining nodes finish their connections but get no new clients.
	Draining
	// Suspect nodes missed probes; they may still come back.
	Suspect
	// Dead nodes are gone until they rejoin.
	Dead
)

func (s State) String() string {
	switch s {
	case Alive:
		return "alive"
	case Draining:
		return "draining"
	case Suspect:
		return "suspect"
	case Dead:
		return "dead"
	}
	return "unknown"
}

// Node is one member of the cluster as seen at the time the Map was made.
type Node struct {
	ID       string
	Region   string
	Lat, Lon float64 // degrees; both zero means "unknown location"
	IPv4     netip.Addr
	IPv6     netip.Addr
	Tags     []string
	State    State
	Load     float64 // 0 is idle; higher is busier; only compared between nodes
	Self     bool    // the node that made this Map
	// Versions let operators see a rolling upgrade on the status page.
	BinaryVersion string
	ConfigVersion string
	// Verified says the node's addresses are vouched for by more than
	// gossip, which anyone holding the gossip key can write: the mesh sets
	// it for a peer whose mutual-TLS link is up with a certificate from the
	// fleet CA naming the peer's node id and, among its IP addresses, IPv4
	// and IPv6. The node that made the map and the nodes of a static list
	// from the config count as verified. DNS hands out verified nodes only.
	Verified bool
	// Unverified says why Verified is false (empty when it is true).
	Unverified string
	// Ready is what the node says of its own data and state: it has
	// started, its Mongo replica is synced and lags no alive peer by more
	// than mongo.max_lag, and it is not draining. DNS prefers ready nodes:
	// a dynamic answer names the serving nodes that are ready, and only
	// when none is, the serving ones that are not (see package dns).
	// The zero value is not ready: whoever makes a Node says so.
	Ready bool
	// NotReady says why Ready is false (empty when it is true).
	NotReady string
	// Coord is the node's network coordinate (Vivaldi, fed by the mesh's
	// probe round trips; see package mesh), nil when unknown: no mesh, or
	// a node of an older version. It must not be modified.
	Coord *coordinate.Coordinate
}

// RTT estimates the round trip time between n and o from their network
// coordinates; false when either has none.
func (n *Node) RTT(o *Node) (time.Duration, bool) {
	if n.Coord == nil || o.Coord == nil || !n.Coord.IsCompatibleWith(o.Coord) {
		return 0, false
	}
	return n.Coord.DistanceTo(o.Coord), true
}

// Serving reports whether DNS may hand this node to new clients: it is
// alive and its addresses are verified. Among serving nodes DNS prefers
// the Ready ones.
func (n *Node) Serving() bool { return n.State == Alive && n.Verified }

// HasTag reports whether the node carries tag t.
func (n *Node) HasTag(t string) bool { return slices.Contains(n.Tags, t) }

// Map is an immutable snapshot of the cluster. Nodes are sorted by ID.
type Map struct {
	Version uint64 // increases with every published Map of one Source
	Nodes   []Node
}

// Node returns the node with the given id.
func (m *Map) Node(id string) (Node, bool) {
	i, ok := slices.BinarySearchFunc(m.Nodes, id, func(n Node, id string) int {
		switch {
		case n.ID < id:
			return -1
		case n.ID > id:
			return 1
		}
		return 0
	})
	if !ok {
		return Node{}, false
	}
	return m.Nodes[i], true
}

// Source publishes Maps. The mesh implements it for a live cluster; Static
// implements it for a fixed list from the config.
type Source interface {
	// Current returns the current Map and a channel that is closed when a
	// newer Map is published. The Map must not be modified.
	Current() (*Map, <-chan struct{})
}

// Publisher is a Source whose Map is replaced by its owner with Publish.
// It is safe for concurrent use. The zero value is not usable; use NewPublisher.
type Publisher struct {
	mu      sync.Mutex
	cur     *Map
	changed chan struct{}
}

// NewPublisher returns a Publisher holding nodes as its first Map.
func NewPublisher(nodes []Node) *Publisher {
	p := &Publisher{changed: make(chan struct{})}
	p.cur = &Map{Version: 1, Nodes: sorted(nodes)}
	return p
}

// Current implements Source.
func (p *Publisher) Current() (*Map, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur, p.changed
}

// Publish replaces the Map with one holding nodes and wakes every waiter.
// The slice is copied; the caller may reuse it.
func (p *Publisher) Publish(nodes []Node) *Map {
	m := &Map{Nodes: sorted(nodes)}
	p.mu.Lock()
	m.Version = p.cur.Version + 1
	p.cur = m
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	return m
}

func sorted(nodes []Node) []Node {
	out := make([]Node, len(nodes))
	copy(out, nodes)
	for i := range out {
		out[i].Tags = slices.Clone(out[i].Tags)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	return out
}
