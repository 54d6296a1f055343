package pubsub

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/edgenode/edgenode/internal/nodemap"
)

// tcpMesh is a small mesh for tests: named topics carried over real
// loopback TCP connections (one outgoing connection per peer), handlers
// called on the reading goroutine, as internal/mesh does. It counts what it
// receives by pubsub message kind, publishes a node map (this node and the
// peers it joined), and can cut the way to a peer (messages to it are
// dropped, as in a network cut).
type tcpMesh struct {
	t    *testing.T
	self string
	ln   net.Listener
	pub  *nodemap.Publisher

	mu       sync.Mutex
	handlers map[string]func(from string, msg []byte)
	peers    []*tcpPeer
	conns    []net.Conn
	received map[byte]int
	sent     map[byte]int
	cuts     map[string]bool
	topics   map[string]int // bytes sent per topic

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
		received: map[byte]int{}, sent: map[byte]int{}, cuts: map[string]bool{}, topics: map[string]int{},
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
		if len(msg) > 0 {
			m.received[msg[0]]++
		}
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
	p := &tcpPeer{id: other.self, c: c, q: make(chan []byte, 1024), wg: &m.wg}
	if _, err := c.Write(appendBlock(nil, []byte(m.self))); err != nil {
		m.t.Fatal(err)
	}
	m.mu.Lock()
	m.peers = append(m.peers, p)
	nodes := []nodemap.Node{{ID: m.self, State: nodemap.Alive, Self: true}}
	for _, q := range m.peers {
		nodes = append(nodes, nodemap.Node{ID: q.id, State: nodemap.Alive})
	}
	m.mu.Unlock()
	m.pub.Publish(nodes)
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
	if len(msg) > 0 {
		m.sent[msg[0]]++
	}
	for _, p := range m.peers {
		m.enqueueLocked(p, topic, b, len(msg))
	}
}

func (m *tcpMesh) Send(node, topic string, msg []byte) error {
	b := appendBlock(appendBlock(nil, []byte(topic)), msg)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(msg) > 0 {
		m.sent[msg[0]]++
	}
	for _, p := range m.peers {
		if p.id == node {
			m.enqueueLocked(p, topic, b, len(msg))
			return nil
		}
	}
	return io.ErrClosedPipe
}

func (m *tcpMesh) enqueueLocked(p *tcpPeer, topic string, b []byte, n int) {
	if m.cuts[p.id] {
		return
	}
	m.topics[topic] += n
	select {
	case p.q <- b:
	default: // a slow peer never blocks: drop, like the real mesh
	}
}

// cut drops everything m sends to peer id (until healed with on false).
func (m *tcpMesh) cut(id string, on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cuts[id] = on
}

func (m *tcpMesh) topicBytes(topic string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.topics[topic]
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

func (m *tcpMesh) count(kind byte, sent bool) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if sent {
		return m.sent[kind]
	}
	return m.received[kind]
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
