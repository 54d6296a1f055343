package dns

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
)

// tcpQuery sends one length-prefixed query on c and reads the answer. An
// error means the server closed the connection instead of answering.
func tcpQuery(t *testing.T, c net.Conn, id uint16) (*mdns.Msg, error) {
	t.Helper()
	pkt := packQuery(t, id, "static.edgenode.test.", mdns.TypeA)
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(pkt)))
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(append(msg, pkt...)); err != nil {
		return nil, err
	}
	var l [2]byte
	if _, err := io.ReadFull(c, l[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, err
	}
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	return m, nil
}

func dialTCPFrom(t *testing.T, from, to string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestTCPConnsPerAddress plays a client that opens more TCP connections
// than one address may hold, to use up the server's connection slots: the
// connections over the cap are closed without being read, while another
// address is still served.
func TestTCPConnsPerAddress(t *testing.T) {
	const perIP, extra = 4, 3
	ts := startServer(t, "", fiveNodes(), func(o *Options) {
		o.MaxTCPConnsPerIP = perIP
		o.TCPIdleTimeout = time.Minute // the held connections must not time out while the test runs
	})
	// Connections are accepted in the order they are made, so the first
	// perIP are the ones served. Each one answers a query before the next
	// is dialed, so the server has surely counted it.
	var held []net.Conn
	for i := range perIP {
		c := dialTCPFrom(t, "127.0.0.1", ts.tcp)
		if _, err := tcpQuery(t, c, uint16(i)); err != nil {
			t.Fatalf("connection %d (within the cap): %v", i, err)
		}
		held = append(held, c)
	}
	for i := range extra {
		c := dialTCPFrom(t, "127.0.0.1", ts.tcp)
		r, err := tcpQuery(t, c, uint16(100+i))
		if err == nil {
			t.Errorf("connection %d over the per-address cap was answered: rcode %d", perIP+i, r.Rcode)
			continue
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !isReset(err) {
			t.Errorf("connection %d over the cap: %v, want it closed", perIP+i, err)
		}
	}
	// Another address is served while 127.0.0.1 holds its cap.
	c := dialTCPFrom(t, "127.0.0.2", ts.tcp)
	if r, err := tcpQuery(t, c, 200); err != nil || len(r.Answer) != 2 {
		t.Fatalf("127.0.0.2 not served: %v %v", r, err)
	}
	// The held connections still work.
	for i, c := range held {
		if _, err := tcpQuery(t, c, uint16(300+i)); err != nil {
			t.Errorf("held connection %d: %v", i, err)
		}
	}
	if got := testutil.ToFloat64(ts.m.tcpRefused.WithLabelValues("conns_per_ip")); got != extra {
		t.Errorf("refused metric %v, want %d", got, extra)
	}
	// Once one closes, 127.0.0.1 may open another.
	held[0].Close()
	testkit.WaitFor(t, settle, "a slot for 127.0.0.1 after a close", func() bool {
		c := dialTCPFrom(t, "127.0.0.1", ts.tcp)
		defer c.Close()
		_, err := tcpQuery(t, c, 400)
		return err == nil
	})
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}
