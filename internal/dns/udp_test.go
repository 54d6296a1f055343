package dns

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// TestUDPBurstsAnswerEachSender sends bursts from many clients at once, so
// the server reads and answers them in batches, with packets it drops in
// between: every query must be answered once, to its own sender, from that
// sender's location.
func TestUDPBurstsAnswerEachSender(t *testing.T) {
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	server, err := net.ResolveUDPAddr("udp", ts.udp)
	if err != nil {
		t.Fatal(err)
	}
	const perClient = 24
	clients := []struct {
		from  string
		first string // the node nearest to the client's location
	}{
		{"127.0.1.1", "pdx"}, {"127.0.1.2", "pdx"}, {"127.0.1.3", "pdx"}, {"127.0.1.4", "pdx"},
		{"127.0.2.1", "sin"}, {"127.0.2.2", "sin"}, {"127.0.2.3", "sin"}, {"127.0.2.4", "sin"},
	}
	junk := [][]byte{
		{1, 2, 3}, // too short for a header
		func() []byte { // a response: never answered
			p := packQuery(t, 1, "widget.edgenode.test.", mdns.TypeA)
			p[2] |= 0x80
			return p
		}(),
	}
	var wg sync.WaitGroup
	for ci, c := range clients {
		conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(c.from)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		want := map[uint16]bool{}
		queries := make([][]byte, perClient)
		for i := range queries {
			id := uint16(ci*1000 + i)
			want[id] = true
			queries[i] = packQuery(t, id, "widget.edgenode.test.", mdns.TypeA)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, q := range queries {
				if _, err := conn.WriteToUDP(q, server); err != nil {
					t.Error(err)
					return
				}
				if _, err := conn.WriteToUDP(junk[i%len(junk)], server); err != nil {
					t.Error(err)
					return
				}
			}
			buf := make([]byte, 4096)
			_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			for len(want) > 0 {
				n, err := conn.Read(buf)
				if err != nil {
					t.Errorf("%s: %d answers missing: %v", c.from, len(want), err)
					return
				}
				var m mdns.Msg
				if err := m.Unpack(buf[:n]); err != nil {
					t.Errorf("%s: %v", c.from, err)
					return
				}
				if !want[m.Id] {
					t.Errorf("%s: answer with id %d, not one of ours or twice", c.from, m.Id)
					return
				}
				delete(want, m.Id)
				if got := answerNodes(t, &m); len(got) == 0 || got[0] != c.first {
					t.Errorf("%s: answer %v, want %s first", c.from, got, c.first)
				}
			}
		}()
	}
	wg.Wait()
}

// TestUDPIPv6 serves over an IPv6 socket: the sender's address is read from
// a sockaddr_in6 and the answer goes back to it.
func TestUDPIPv6(t *testing.T) {
	if c, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback:", err)
	} else {
		c.Close()
	}
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), func(o *Options) { o.Listen = "[::1]:0" })
	r := ts.query(t, "widget.edgenode.test.", mdns.TypeAAAA, qopt{ecs: ecs("2001:db8:5::/48")})
	if got := answerNodes(t, r); len(got) != 2 || got[0] != "sin" {
		t.Errorf("AAAA for a client in Tokyo over IPv6: %v", got)
	}
	r = ts.query(t, "static.edgenode.test.", mdns.TypeA, qopt{})
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 2 {
		t.Errorf("static A over IPv6: %v", r)
	}
}

// TestUDPShutdownUnderFlood stops the server while clients keep sending:
// the reading side is shut down but datagrams keep arriving, and serving
// must still end.
func TestUDPShutdownUnderFlood(t *testing.T) {
	ts := startServer(t, "", fiveNodes(), nil)
	pkt := packQuery(t, 9, "static.edgenode.test.", mdns.TypeA)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		c, err := net.Dial("udp", ts.udp)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = c.Write(pkt) // refused once the server is gone: fine
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	// Answers flowing: the flood reaches the server.
	ts.query(t, "static.edgenode.test.", mdns.TypeA, qopt{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown under a flood: %v", err)
	}
}
