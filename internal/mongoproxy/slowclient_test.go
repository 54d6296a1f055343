package mongoproxy

import (
	"encoding/binary"
	"net"
	"runtime"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// waitClosed reports whether the proxy closed nc (a read ends in EOF or a
// reset) before the bound.
func waitClosed(nc net.Conn, bound time.Duration) bool {
	_ = nc.SetReadDeadline(time.Now().Add(bound))
	buf := make([]byte, 4096)
	for {
		if _, err := nc.Read(buf); err != nil {
			ne, ok := err.(net.Error)
			return !ok || !ne.Timeout()
		}
	}
}

// TestSlowClientsCannotPinMemory plays clients that each declare a message
// of the maximum size (48 MB) and send 16 bytes of it: the proxy must not
// allocate what was only announced, and must close each connection once
// the message is overdue.
func TestSlowClientsCannotPinMemory(t *testing.T) {
	tp := newProxy(t, 0, "n1", func(o *Options) { o.MessageTimeout = 2 * time.Second })
	const conns = 50
	const budget = conns * (4 << 20) // generous: 4 MiB a connection, against 48 MB announced
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	start := ms.TotalAlloc // cumulative: counts allocations the GC already freed

	closed := make(chan bool, conns)
	for i := 0; i < conns; i++ {
		nc, err := net.Dial("tcp", tp.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		b := make([]byte, wire.HeaderLen+16)
		binary.LittleEndian.PutUint32(b, uint32(wire.DefaultMaxMessageSize))
		binary.LittleEndian.PutUint32(b[4:], uint32(i+1))
		binary.LittleEndian.PutUint32(b[12:], uint32(wire.OpMsg))
		if _, err := nc.Write(b); err != nil {
			t.Fatal(err)
		}
		go func() { closed <- waitClosed(nc, 60*time.Second) }()
	}
	deadline := time.After(90 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	grown := func() uint64 {
		runtime.ReadMemStats(&ms)
		return ms.TotalAlloc - start
	}
	for done := 0; done < conns; {
		select {
		case ok := <-closed:
			if !ok {
				t.Fatalf("a connection with an overdue message is still open after 60s")
			}
			done++
		case <-tick.C:
			if g := grown(); g > budget {
				t.Fatalf("the proxy allocated %d MiB for %d connections that sent 32 bytes each (budget %d MiB)", g>>20, conns, budget>>20)
			}
		case <-deadline:
			t.Fatal("the proxy did not close the slow connections")
		}
	}
	g := grown()
	if g > budget {
		t.Fatalf("the proxy allocated %d MiB for %d connections that sent 32 bytes each (budget %d MiB)", g>>20, conns, budget>>20)
	}
	t.Logf("%d connections that announced 48 MB and sent 32 bytes cost %d KiB in all", conns, g>>10)
	// A well-behaved client is served all along.
	if err := tp.client.Ping(testCtx, nil); err != nil {
		t.Fatal(err)
	}
}

// TestIdleClientsAreClosed: a client that sends nothing (or nothing more)
// for IdleTimeout is disconnected; the node's internal connection, idle
// for longer, is not.
func TestIdleClientsAreClosed(t *testing.T) {
	tp := newProxy(t, 0, "n1", func(o *Options) { o.IdleTimeout = 2 * time.Second })
	internal, err := tp.DialInternal(testCtx, "tcp", "internal")
	if err != nil {
		t.Fatal(err)
	}
	defer internal.Close()

	silent := dialRaw(t, tp.Addr().String())
	talker := dialRaw(t, tp.Addr().String())
	if r := talker.cmd(bson.D{{Key: "ping", Value: 1}, {Key: "$db", Value: "admin"}}); r.Lookup("ok").AsFloat64() != 1 {
		t.Fatalf("ping: %v", r)
	}
	for name, r := range map[string]*rawClient{"silent": silent, "after a command": talker} {
		if !waitClosed(r.nc, 60*time.Second) {
			t.Fatalf("%s: idle connection still open after 60s", name)
		}
	}
	// Both TCP clients timed out; the internal connection, older, still works.
	ic := &rawClient{t: t, nc: internal}
	if r := ic.cmd(bson.D{{Key: "ping", Value: 1}, {Key: "$db", Value: "admin"}}); r.Lookup("ok").AsFloat64() != 1 {
		t.Fatalf("internal ping: %v", r)
	}
}
