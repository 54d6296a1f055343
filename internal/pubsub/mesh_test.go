package pubsub

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/hashicorp/serf/coordinate"

	"github.com/edgenode/edgenode/internal/nodemap"
)

// tcpMesh is a small mesh for tests: named topics carried over real
// loopback TCP connections (one outgoing connection per peer), handlers
// called on the reading goroutine, as internal/mesh does. It publishes a
// node map (this node and the peers it joined), and can cut the way to a
// peer (messages to it are held, or lost, as in a network cut).
type tcpMesh struct {
	t    *testing.T
	self string
	ln   net.Listener
	pub  *nodemap.Publisher

	mu       sync.Mutex
	handlers map[string]func(from string, msg []byte)
	peers    []*tcpPeer
	conns    []net.Conn
	cuts     map[string]bool
	held     map[string][][]byte // sent during a cut, delivered when it heals
	coords   map[string]*coordinate.Coordinate

	wg sync.WaitGroup
}

type tcpPeer struct {
	id string
	c  net.Conn
	q  chan []byte
	wg *sync.WaitGroup
}

func newTCPMesh(t *testing.T, self string) *tcpMesh {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &tcpMesh{t: t, self: self, ln: ln, handlers: map[string]func(string, []byte){},
		cuts: map[string]bool{}, held: map[string][][]byte{},
		pub: nodemap.NewPublisher([]nodemap.Node{{ID: self, State: nodemap.Alive, Self: true}})}
	m.wg.Add(1)
	go m.accept()
	return m
}

func (m *tcpMesh) accept() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		m.mu.Lock()
		m.conns = append(m.conns, c)
		m.mu.Unlock()
		m.wg.Add(1)
		go m.read(c)
	}
}

func readBlock(br *bufio.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	_, err := io.ReadFull(br, b)
	return b, err
}

func appendBlock(b, data []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// read: the first block names the peer; then (topic, message) pairs.
func (m *tcpMesh) read(c net.Conn) {
	defer m.wg.Done()
	br := bufio.NewReader(c)
	from, err := readBlock(br)
	if err != nil {
		return
	}
	for {
		topic, err := readBlock(br)
		if err != nil {
			return
		}
		msg, err := readBlock(br)
		if err != nil {
			return
		}
		m.mu.Lock()
		h := m.handlers[string(topic)]
		m.mu.Unlock()
		if h != nil {
			h(string(from), msg)
		}
	}
}

// join connects m to other (one direction: m's messages to other).
func (m *tcpMesh) join(other *tcpMesh) {
	c, err := net.Dial("tcp", other.ln.Addr().String())
	if err != nil {
		m.t.Fatal(err)
	}
	p := &tcpPeer{id: other.self, c: c, q: make(chan []byte, 8192), wg: &m.wg}
	if _, err := c.Write(appendBlock(nil, []byte(m.self))); err != nil {
		m.t.Fatal(err)
	}
	m.mu.Lock()
	m.peers = append(m.peers, p)
	m.mu.Unlock()
	m.publishMap()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for b := range p.q {
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
}

func (m *tcpMesh) Broadcast(topic string, msg []byte) {
	b := appendBlock(appendBlock(nil, []byte(topic)), msg)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.peers {
		m.enqueueLocked(p, b)
	}
}

func (m *tcpMesh) Send(node, topic string, msg []byte) error {
	b := appendBlock(appendBlock(nil, []byte(topic)), msg)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.peers {
		if p.id == node {
			m.enqueueLocked(p, b)
			return nil
		}
	}
	return io.ErrClosedPipe
}

func (m *tcpMesh) enqueueLocked(p *tcpPeer, b []byte) {
	if m.cuts[p.id] {
		m.held[p.id] = append(m.held[p.id], b)
		return
	}
	select {
	case p.q <- b:
	default: // a slow peer never blocks: drop, like the real mesh
	}
}

// cut holds everything m sends to peer id until healed (on false), then
// delivers it late, as a transport that retransmits after a short cut
// does. With drop, what was held is lost instead.
// publishMap publishes the node map: this node and the peers it joined,
// with their coordinates if setCoords gave them.
func (m *tcpMesh) publishMap() {
	m.mu.Lock()
	nodes := []nodemap.Node{{ID: m.self, State: nodemap.Alive, Self: true, Coord: m.coords[m.self]}}
	for _, q := range m.peers {
		nodes = append(nodes, nodemap.Node{ID: q.id, State: nodemap.Alive, Coord: m.coords[q.id]})
	}
	m.mu.Unlock()
	m.pub.Publish(nodes)
}

// setCoords gives the nodes network coordinates (as the real mesh's
// Vivaldi estimates would) and republishes the map.
func (m *tcpMesh) setCoords(coords map[string]*coordinate.Coordinate) {
	m.mu.Lock()
	m.coords = coords
	m.mu.Unlock()
	m.publishMap()
}

func (m *tcpMesh) cut(id string, on bool, drop ...bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cuts[id] = on
	if on {
		return
	}
	held := m.held[id]
	delete(m.held, id)
	if len(drop) > 0 && drop[0] {
		return
	}
	for _, p := range m.peers {
		if p.id == id {
			for _, b := range held {
				select {
				case p.q <- b:
				default:
				}
			}
		}
	}
}

func (m *tcpMesh) Current() (*nodemap.Map, <-chan struct{}) { return m.pub.Current() }

func (m *tcpMesh) Handle(topic string, h func(from string, msg []byte)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if h == nil {
		delete(m.handlers, topic)
	} else {
		m.handlers[topic] = h
	}
}

func (m *tcpMesh) close() {
	m.ln.Close()
	m.mu.Lock()
	for _, p := range m.peers {
		close(p.q)
		p.c.Close()
	}
	for _, c := range m.conns {
		c.Close()
	}
	m.peers, m.conns = nil, nil
	m.mu.Unlock()
	m.wg.Wait()
}
