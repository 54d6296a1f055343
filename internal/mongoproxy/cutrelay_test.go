package mongoproxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
	"github.com/edgenode/edgenode/internal/replica"
	"github.com/edgenode/edgenode/internal/testkit"
)

// cutRelay is a TCP relay between clients (a raw client or a driver) and a
// proxy that cuts the clients' connections at a replica fault point: when
// armed, the next time the core reaches that point (a write's ops are in
// the op log, say) every client connection through the relay is closed at
// once, as a network failure would, before the proxy can answer. The
// proxy's side of each cut connection stays open until the proxy has
// answered, and the replies the clients never got are kept (lost), so a
// test can compare a retry's reply with the original one.
//
// Use: r := newCutRelay(t); start the proxy with Options.Faults =
// r.hook; r.start(t, proxyAddr); clients dial r.addr(); r.arm(point)
// before the write to cut. A driver connected through the relay sees a
// network error on the cut connection and (with retryWrites) retries on a
// new one, through the relay too.
type cutRelay struct {
	ln     net.Listener
	target string
	armed  atomic.Pointer[replica.FaultPoint]
	cuts   atomic.Int32

	mu    sync.Mutex
	pairs map[*relayPair]struct{}
	lost  [][]byte // replies the proxy sent on cut connections
	wg    sync.WaitGroup
}

type relayPair struct {
	client, proxy net.Conn
	cut           atomic.Bool
}

func newCutRelay(t testing.TB) *cutRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &cutRelay{ln: ln, pairs: map[*relayPair]struct{}{}}
	t.Cleanup(r.close)
	return r
}

// start relays connections to the proxy at target.
func (r *cutRelay) start(t testing.TB, target string) {
	t.Helper()
	r.target = target
	r.wg.Add(1)
	go r.accept()
}

func (r *cutRelay) addr() string { return r.ln.Addr().String() }

// arm makes the next hit of point cut every client connection.
func (r *cutRelay) arm(point replica.FaultPoint) { r.armed.Store(&point) }

// hook is the proxy's Options.Faults.
func (r *cutRelay) hook(at replica.FaultPoint) {
	if p := r.armed.Load(); p == nil || *p != at || !r.armed.CompareAndSwap(p, nil) {
		return
	}
	r.mu.Lock()
	for pr := range r.pairs {
		pr.cut.Store(true)
		_ = pr.client.Close()
	}
	r.mu.Unlock()
	r.cuts.Add(1)
}

// lostReply waits for the reply to request id that a cut kept from its
// client, and returns its body.
func (r *cutRelay) lostReply(t testing.TB, id int32) []byte {
	t.Helper()
	var body []byte
	testkit.WaitFor(t, 30*time.Second, "the proxy's reply on the cut connection", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, m := range r.lost {
			if h, _ := wire.ParseHeader(m); h.ResponseTo == id {
				msg, err := wire.ParseMsg(m)
				if err != nil {
					t.Fatalf("lost reply: %v", err)
				}
				body = msg.Body
				return true
			}
		}
		return false
	})
	return body
}

func (r *cutRelay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		p, err := net.DialTimeout("tcp", r.target, 10*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		pr := &relayPair{client: c, proxy: p}
		r.mu.Lock()
		r.pairs[pr] = struct{}{}
		r.mu.Unlock()
		r.wg.Add(2)
		go r.up(pr)
		go r.down(pr)
	}
}

// up copies client to proxy; once the client side is gone the proxy gets
// EOF after the messages it was sent.
func (r *cutRelay) up(pr *relayPair) {
	defer r.wg.Done()
	_, _ = io.Copy(pr.proxy, pr.client)
	if tc, ok := pr.proxy.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// down copies the proxy's replies, message by message, to the client, or
// keeps them once the pair is cut.
func (r *cutRelay) down(pr *relayPair) {
	defer r.wg.Done()
	defer func() {
		_ = pr.proxy.Close()
		_ = pr.client.Close()
		r.mu.Lock()
		delete(r.pairs, pr)
		r.mu.Unlock()
	}()
	br := bufio.NewReader(pr.proxy)
	for {
		_ = pr.proxy.SetReadDeadline(time.Now().Add(2 * time.Minute))
		m, err := wire.ReadMessage(br, nil, 64<<20)
		if err != nil {
			return
		}
		if !pr.cut.Load() {
			if _, err := pr.client.Write(m); err == nil || !pr.cut.Load() {
				continue
			}
		}
		r.mu.Lock()
		r.lost = append(r.lost, bytes.Clone(m))
		r.mu.Unlock()
	}
}

func (r *cutRelay) close() {
	_ = r.ln.Close()
	r.mu.Lock()
	for pr := range r.pairs {
		_ = pr.client.Close()
		_ = pr.proxy.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}
