package transport_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/transport"
)

var body10k = bytes.Repeat([]byte("0123456789abcdef"), 640)

func benchServer(b *testing.B) *testServer {
	return startServer(b, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(body10k)
	}), nil, func(s *transport.Server) {})
}

// BenchmarkRequests10KiB compares HTTP/2 and HTTP/3 (quic-go's client and
// server) for a 10 KiB response on loopback, with 32 concurrent requests
// per core over one connection per protocol (as a browser would). It
// reports requests/s and the p99 latency; figures are for `make bench`,
// issue 9's target is HTTP/3 at 60% or more of HTTP/2 with p99 within 2x.
func BenchmarkRequests10KiB(b *testing.B) {
	ts := benchServer(b)
	h3, h3tr := h3Client()
	defer h3tr.Close()
	h2 := h2Client()
	defer h2.CloseIdleConnections()
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"h2", h2}, {"h3", h3}} {
		b.Run(c.name, func(b *testing.B) {
			url := "https://" + ts.addr + "/10k"
			// Warm the connection up outside the timing.
			resp, err := c.client.Get(url)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			var mu sync.Mutex
			var lat []time.Duration
			b.ReportAllocs()
			b.SetParallelism(32)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					t0 := time.Now()
					resp, err := c.client.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					n, _ := io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if n != int64(len(body10k)) {
						b.Errorf("short body: %d", n)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			elapsed := time.Since(start)
			b.StopTimer()
			slices.Sort(lat)
			if len(lat) > 0 {
				b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "req/s")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}

// BenchmarkHandshake compares full handshakes (ECDSA P-256 certificate)
// with resumed ones (session ticket), one TCP connection per iteration,
// client and server in this process. Issue 9's target: resumed at 3x full
// or more. In TLS 1.3 a resumption still runs the (hybrid X25519+ML-KEM)
// key exchange, which is most of the cost, so it only saves the signature;
// TLS 1.2 resumption skips the key exchange too.
func BenchmarkHandshake(b *testing.B) {
	ts := startServer(b, false, http.NotFoundHandler(), nil, nil)
	for _, v := range []struct {
		name    string
		version uint16
		resumed bool
	}{{"tls13-full", tls.VersionTLS13, false}, {"tls13-resumed", tls.VersionTLS13, true},
		{"tls12-full", tls.VersionTLS12, false}, {"tls12-resumed", tls.VersionTLS12, true}} {
		resumed := v.resumed
		b.Run(v.name, func(b *testing.B) {
			conf := insecureTLS()
			conf.NextProtos = []string{"http/1.1"}
			conf.MaxVersion = v.version
			if resumed {
				conf.ClientSessionCache = tls.NewLRUClientSessionCache(1)
				// A ticket arrives after the handshake: get one first. Go's
				// client keeps it in the cache and may offer it again, and
				// the server accepts it again (no 0-RTT, no replay risk).
				getTicket(b, ts.addr, conf)
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for b.Loop() {
				raw, err := net.Dial("tcp", ts.addr)
				if err != nil {
					b.Fatal(err)
				}
				c := tls.Client(raw, conf)
				if err := c.Handshake(); err != nil {
					b.Fatal(err)
				}
				if resumed && !c.ConnectionState().DidResume {
					b.Fatal("did not resume")
				}
				c.Close()
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "handshakes/s")
		})
	}
}

func getTicket(b *testing.B, addr string, conf *tls.Config) {
	c, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		b.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
	io.Copy(io.Discard, c)
	c.Close()
}
