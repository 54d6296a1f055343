package repl

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/replica/replicatest"
)

// The unit tests (TestUnit*) run Replicators on fake replica cores
// (package replicatest) over fakeNet, an in-memory transport: no database,
// no mesh. The end-to-end tests (repl_test.go, attack_test.go) run the
// real ones.

// fakeNet delivers messages between Replicators in memory: per pair of
// nodes in order, on a goroutine per pair (as the mesh's stream readers),
// at most once: drop decides which are lost, and a pair's full queue
// refuses with ErrQueueFull.
type fakeNet struct {
	t    testing.TB
	pub  *nodemap.Publisher
	done chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	handlers map[string]map[string]func(from string, msg []byte) // node, topic
	pairs    map[[2]string]chan delivery
	drop     func(from, to, topic string, msg []byte) bool
	observe  func(from, to, topic string, msg []byte)
}

type delivery struct {
	topic string
	msg   []byte
}

func newFakeNet(t testing.TB, ids ...string) *fakeNet {
	var nodes []nodemap.Node
	for _, id := range ids {
		nodes = append(nodes, nodemap.Node{ID: id, State: nodemap.Alive})
	}
	n := &fakeNet{t: t, pub: nodemap.NewPublisher(nodes), done: make(chan struct{}),
		handlers: map[string]map[string]func(string, []byte){}, pairs: map[[2]string]chan delivery{}}
	t.Cleanup(func() { close(n.done); n.wg.Wait() })
	return n
}

// setDrop makes the net lose the messages drop returns true for (nil:
// none); observe sees every message sent, lost or not.
func (n *fakeNet) setDrop(drop func(from, to, topic string, msg []byte) bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.drop = drop
}

func (n *fakeNet) setObserve(observe func(from, to, topic string, msg []byte)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.observe = observe
}

func (n *fakeNet) send(from, to, topic string, msg []byte) error {
	n.mu.Lock()
	if n.observe != nil {
		n.observe(from, to, topic, msg)
	}
	if n.drop != nil && n.drop(from, to, topic, msg) {
		n.mu.Unlock()
		return nil
	}
	key := [2]string{from, to}
	q := n.pairs[key]
	if q == nil {
		q = make(chan delivery, 512)
		n.pairs[key] = q
		n.wg.Add(1)
		go n.deliver(from, to, q)
	}
	n.mu.Unlock()
	select {
	case q <- delivery{topic: topic, msg: msg}:
		return nil
	default:
		return ErrQueueFull
	}
}

func (n *fakeNet) deliver(from, to string, q chan delivery) {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			return
		case d := <-q:
			n.mu.Lock()
			h := n.handlers[to][d.topic]
			n.mu.Unlock()
			if h != nil {
				h(from, d.msg)
			}
		}
	}
}

// transport is node id's view of the net.
func (n *fakeNet) transport(id string) Transport { return &fakeTransport{n: n, id: id} }

type fakeTransport struct {
	n  *fakeNet
	id string
}

func (f *fakeTransport) Send(node, topic string, msg []byte) error {
	return f.n.send(f.id, node, topic, msg)
}

func (f *fakeTransport) Broadcast(topic string, msg []byte) {
	m, _ := f.n.pub.Current()
	for _, nd := range m.Nodes {
		if nd.ID != f.id {
			_ = f.n.send(f.id, nd.ID, topic, msg)
		}
	}
}

func (f *fakeTransport) Handle(topic string, h func(from string, msg []byte)) {
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	if f.n.handlers[f.id] == nil {
		f.n.handlers[f.id] = map[string]func(string, []byte){}
	}
	f.n.handlers[f.id][topic] = h
}

func (f *fakeTransport) Current() (*nodemap.Map, <-chan struct{}) { return f.n.pub.Current() }

// fakeNode is a Replicator on a fake core.
type fakeNode struct {
	rep  *Replicator
	core *replicatest.Core
}

// fastOptions are timings that keep the unit tests short.
func fastOptions(id string, n *fakeNet) Options {
	return Options{NodeID: id, Transport: n.transport(id), HeartbeatInterval: 20 * time.Millisecond, ResendAfter: 200 * time.Millisecond,
		BootstrapWait: 300 * time.Millisecond, SyncTimeout: 10 * time.Second, TrimInterval: time.Hour}
}

// newFakeNode builds (not starts) a Replicator for node id on a new fake
// core; synced makes the core's database a synced replica already.
func newFakeNode(t testing.TB, n *fakeNet, id string, synced bool, tune func(*Options)) *fakeNode {
	t.Helper()
	core := replicatest.New(id, time.Minute)
	if synced {
		core.MarkSynced()
	}
	opts := fastOptions(id, n)
	if tune != nil {
		tune(&opts)
	}
	var w io.Writer = io.Discard
	if os.Getenv("REPL_TEST_LOG") != "" {
		w = os.Stderr
	}
	rep, err := New(opts, core, slog.New(slog.NewTextHandler(w, nil)).With("node", id), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &fakeNode{rep: rep, core: core}
}

func (f *fakeNode) start(t testing.TB) {
	t.Helper()
	if err := f.rep.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := f.rep.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
}
