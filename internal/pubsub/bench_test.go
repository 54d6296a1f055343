package pubsub

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Benchmarks for `make bench`, not tests.

// BenchmarkFanoutTLS: one op is one message published to N websocket
// subscribers over real TLS loopback sockets (the readers run in this
// process too), until every subscriber has read it.
func BenchmarkFanoutTLS(b *testing.B) {
	for _, subs := range []int{100, 1000} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			opts := testOptions()
			opts.MaxConnsPerIP = -1
			n := newNodeTB(b, opts, nil)
			var got atomic.Int64
			var wg sync.WaitGroup
			cfg := n.tls.Clone()
			cfg.NextProtos = nil
			d := websocket.Dialer{TLSClientConfig: cfg}
			var conns []*websocket.Conn
			for range subs {
				ws, _, err := d.Dial(n.wsURL(""), nil)
				if err != nil {
					b.Fatal(err)
				}
				conns = append(conns, ws)
				ws.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","channel":"demo/thread-1"}`))
				ws.ReadMessage()
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						if _, _, err := ws.ReadMessage(); err != nil {
							return
						}
						got.Add(1)
					}
				}()
			}
			msg := json.RawMessage(`{"id":"c0ffee","author":"someone","text":"a comment of a typical size, a sentence or two long.","votes":3}`)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				n.ps.Publish("demo/thread-1", msg)
				want := int64(i+1) * int64(subs)
				deadline := time.Now().Add(30 * time.Second)
				for got.Load() < want {
					if time.Now().After(deadline) {
						b.Fatalf("message %d: %d of %d deliveries; %d connections", i, got.Load(), want, n.ps.connCount())
					}
					time.Sleep(20 * time.Microsecond)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(subs), "ns/delivery")
			for _, ws := range conns {
				ws.Close()
			}
			wg.Wait()
			n.close()
		})
	}
}

func addrFor(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// discardConn is a socket that accepts every write at once: fan-out
// through it measures this package's own cost per delivery (queueing,
// writer goroutine, frame), without TLS and the kernel.
type discardConn struct {
	net.Conn
	writes atomic.Int64
}

func (d *discardConn) Write(p []byte) (int, error) { d.writes.Add(1); return len(p), nil }
func (d *discardConn) Close() error                { return nil }
func (d *discardConn) SetWriteDeadline(time.Time) error {
	return nil
}

// BenchmarkFanoutQueue: one op is one message fanned out to 10,000
// subscribers whose sockets take writes at once.
func BenchmarkFanoutQueue(b *testing.B) {
	const subs = 10000
	opts := testOptions()
	opts.PingInterval = time.Hour // no pings in the count
	ps, err := New(opts, nil, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ps.Close()
	var sinks []*discardConn
	for i := range subs {
		d := &discardConn{}
		c := &conn{p: ps, kind: kindWS, nc: d}
		c.lastRead.Store(time.Now().UnixNano())
		if ps.reserve(addrFor(i)) != "" || !ps.admit(c) {
			b.Fatal("admit")
		}
		ps.wg.Done() // no handler goroutine here
		if code := ps.join(c, ps.tenant("demo"), "demo/thread-1", nil, ""); code != "" {
			b.Fatal(code)
		}
		sinks = append(sinks, d)
	}
	total := func() (n int64) {
		for _, d := range sinks {
			n += d.writes.Load()
		}
		return n
	}
	for total() < subs { // the "subscribed" replies
		time.Sleep(time.Millisecond)
	}
	base := total()
	msg := json.RawMessage(`{"id":"c0ffee","author":"someone","text":"a comment of a typical size, a sentence or two long.","votes":3}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ps.Publish("demo/thread-1", msg)
		want := base + int64(i+1)*subs
		deadline := time.Now().Add(30 * time.Second)
		for total() < want {
			if time.Now().After(deadline) {
				b.Fatalf("message %d: %d of %d writes", i, total(), want)
			}
			time.Sleep(10 * time.Microsecond)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/subs, "ns/delivery")
}

func BenchmarkEncodeMessage(b *testing.B) {
	data := []byte(`{"id":"c0ffee","author":"someone","text":"a comment of a typical size, a sentence or two long.","votes":3}`)
	b.ReportAllocs()
	for range b.N {
		newMessage("demo/thread-1", Position{"abcdefgh", 12345}, data, time.Time{})
	}
}

func BenchmarkDecodeClientFrame(b *testing.B) {
	f := []byte(`{"type":"subscribe","channel":"demo/thread-1","since":{"epoch":"abcdefgh","offset":12}}`)
	b.ReportAllocs()
	for range b.N {
		decodeClientFrame(f)
	}
}
