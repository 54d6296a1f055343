package mesh

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/quic-go/quic-go"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
)

// rawDial connects to a node's link address the way a peer would, with any
// certificate, and writes a message on a stream. It returns the
// connection, or nil when the handshake failed. The server checks the
// client certificate after the client finished its part of the handshake,
// so a refused client sees its connection closed after that.
func rawDial(t *testing.T, c *cluster, target string, cert tls.Certificate) *quic.Conn {
	t.Helper()
	return rawDialALPN(t, c, target, cert, offered(Protocol))
}

// rawDialALPN is rawDial offering the ALPN protocol IDs protos.
func rawDialALPN(t *testing.T, c *cluster, target string, cert tls.Certificate, protos []string) *quic.Conn {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(c.ip())})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() {
		tr.Close()
		udp.Close()
	})
	addr, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := tr.Dial(ctx, addr, &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true,
		NextProtos:         protos,
	}, &quic.Config{})
	if err != nil {
		return nil
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	s, err := conn.OpenUniStream()
	if err == nil {
		_, _ = s.Write(appendFrame(appendStreamHeader(nil, Protocol, "t"), []byte("hi")))
	}
	return conn
}

func TestInboundLinkChecks(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b")
	for _, n := range nodes {
		waitMap(t, n, settle, "2 alive", allState([]string{"a", "b"}, nodemap.Alive))
	}
	a := nodes[0]
	in := newInbox()
	a.Handle("t", in.handler("t"))
	load := func(o Options) tls.Certificate {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	refused := func(reason string) float64 {
		return testutil.ToFloat64(a.met.refused.WithLabelValues(reason))
	}

	foreign := newCluster(t).options("b")
	cases := []struct {
		name, reason string
		cert         tls.Certificate
	}{
		// b's id, but signed by another CA.
		{"foreign CA", "bad_certificate", load(foreign)},
		// b's real certificate and key, but not from b's advertised address:
		// a stolen key alone is not enough.
		{"impostor address", "address_mismatch", load(c.nodes["b"].opts)},
		// A valid certificate for a node that is not a member.
		{"not a member", "unknown_member", load(c.options("zz"))},
		// a's own identity.
		{"own id", "wrong_id", load(a.opts)},
	}
	for _, tc := range cases {
		before := refused(tc.reason)
		conn := rawDial(t, c, a.opts.LinkAddr, tc.cert)
		testkit.WaitFor(t, settle, tc.name+" counted", func() bool { return refused(tc.reason) > before })
		// Counted as refused: the connection, if the handshake let it be
		// made, must now be closed.
		if conn != nil {
			select {
			case <-conn.Context().Done():
			case <-time.After(settle):
				t.Errorf("%s: connection accepted", tc.name)
			}
		}
	}
	if n := len(in.snapshot()); n != 0 {
		t.Errorf("a accepted %d messages from refused peers", n)
	}
	// The real b is still linked.
	testkit.WaitFor(t, settle, "b's real link still works", func() bool {
		_ = nodes[1].Send("a", "t", []byte("real"))
		return len(in.snapshot()) > 0
	})
	if got := in.snapshot()[0]; got.from != "b" {
		t.Errorf("message from %q", got.from)
	}
}

// A node restarted before the cluster noticed it was gone: its peers' old
// QUIC connections point at a process that no longer exists. Two things
// end them quickly instead of QUIC's idle timeout: the new boot id in the
// node's gossip metadata, and the stateless reset the new process sends for
// the old connection (its reset key is derived from the node's key, so it
// survives the restart). Whichever comes first, the peers redial.
func TestQuickRestartResetsLinks(t *testing.T) {
	c := newCluster(t)
	nodes := c.startN("a", "b")
	for _, n := range nodes {
		waitMap(t, n, settle, "2 alive", allState([]string{"a", "b"}, nodemap.Alive))
	}
	a, b := nodes[0], nodes[1]
	in := newInbox()
	b.Handle("t", in.handler("t"))
	testkit.WaitFor(t, settle, "first message", func() bool {
		_ = a.Send("b", "t", []byte("before"))
		return len(in.snapshot()) > 0
	})

	b.kill()
	opts := b.opts
	opts.Seeds = []string{a.opts.BindAddr}
	b2 := c.startNoSeedUpdate(opts)
	in2 := newInbox()
	b2.Handle("t", in2.handler("t"))
	testkit.WaitFor(t, settle, "message to the restarted b", func() bool {
		_ = a.Send("b", "t", []byte("after"))
		return len(in2.snapshot()) > 0
	})
	logs := a.logs.String()
	switch {
	case strings.Contains(logs, "err=\"peer restarted\""):
		t.Log("old link dropped on the new boot id")
	case strings.Contains(logs, "stateless reset"):
		t.Log("old link ended by a stateless reset")
	default:
		t.Errorf("the old link was not dropped by either mechanism; a's log:\n%s", logs)
	}
}
