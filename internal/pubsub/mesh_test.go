package pubsub

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
)

// tcpMesh is a small mesh for tests: named topics carried over real
// loopback TCP connections (one outgoing connection per peer), handlers
// called on the reading goroutine, as internal/mesh does. It counts what it
// receives by pubsub message kind.
type tcpMesh struct {
	t    *testing.T
	self string
	ln   net.Listener

	mu       sync.Mutex
	handlers map[string]func(from string, msg []byte)
	peers    []*tcpPeer
	conns    []net.Conn
	received map[byte]int
	sent     map[byte]int

	wg sync.WaitGroup
}

type tcpPeer struct {
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
		received: map[byte]int{}, sent: map[byte]int{}}
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
	p := &tcpPeer{c: c, q: make(chan []byte, 1024), wg: &m.wg}
	if _, err := c.Write(appendBlock(nil, []byte(m.self))); err != nil {
		m.t.Fatal(err)
	}
	m.mu.Lock()
	m.peers = append(m.peers, p)
	m.mu.Unlock()
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
		select {
		case p.q <- b:
		default: // a slow peer never blocks: drop, like the real mesh
		}
	}
}

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
