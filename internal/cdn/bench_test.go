package cdn

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/edgenode/edgenode/internal/testkit"
)

// discardWriter is the least a ResponseWriter can be: it shows what the
// cache itself allocates per hit. The benchmark gives it a fresh header map
// per request as net/http does; those 2 allocations (map and its first
// group of 8 slots) are net/http's, the cache adds none as long as it sets
// at most 8 headers.
type discardWriter struct {
	h    http.Header
	code int
	n    int64
}

func (w *discardWriter) Header() http.Header  { return w.h }
func (w *discardWriter) WriteHeader(code int) { w.code = code }
func (w *discardWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return len(p), nil
}

func benchSizes() []struct {
	name string
	size int
} {
	return []struct {
		name string
		size int
	}{{"10KiB", 10 << 10}, {"1MiB", 1 << 20}}
}

// warmDirCache returns a cache over a folder origin holding obj.bin of the
// given size, already cached.
func warmDirCache(b *testing.B, size int) (*Cache, *httptest.Server) {
	c, srv, dir := newDirCache(b, nil)
	if err := os.WriteFile(filepath.Join(dir, "obj.bin"), randBytes(size), 0o644); err != nil {
		b.Fatal(err)
	}
	r := doGet(b, srv.Client(), http.MethodGet, srv.URL+"/media/obj.bin")
	if r.status != 200 || len(r.body) != size {
		b.Fatalf("warm-up: %d", r.status)
	}
	testkit.WaitFor(b, settleTimeout, "fill", func() bool { return c.running.Load() == 0 })
	return c, srv
}

// BenchmarkHit measures the hit path: the handler alone (allocations are
// the cache's own), and over loopback HTTP/1.1 and HTTP/2 with TLS.
func BenchmarkHit(b *testing.B) {
	for _, sz := range benchSizes() {
		b.Run("handler/"+sz.name, func(b *testing.B) {
			c, _ := warmDirCache(b, sz.size)
			req := httptest.NewRequest(http.MethodGet, "/media/obj.bin", nil)
			w := &discardWriter{h: http.Header{}}
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			for b.Loop() {
				w.h = make(http.Header) // as net/http does per request
				w.n = 0
				c.ServeHTTP(w, req)
				if w.n != int64(sz.size) || w.h.Get("X-Cache") != "HIT" {
					b.Fatalf("served %d bytes, %v", w.n, w.h)
				}
			}
		})
		b.Run("http1/"+sz.name, func(b *testing.B) {
			_, srv := warmDirCache(b, sz.size)
			benchClient(b, srv.Client(), srv.URL+"/media/obj.bin", sz.size)
		})
		b.Run("h2tls/"+sz.name, func(b *testing.B) {
			c, _ := warmDirCache(b, sz.size)
			srv := newH2Server(b, c)
			benchClient(b, srv.Client(), srv.URL+"/media/obj.bin", sz.size)
		})
	}
}

func benchClient(b *testing.B, client *http.Client, url string, size int) {
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 64<<10)
		for pb.Next() {
			res, err := client.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.CopyBuffer(io.Discard, res.Body, buf)
			res.Body.Close()
			if n != int64(size) {
				b.Errorf("got %d bytes", n)
				return
			}
		}
	})
}

// BenchmarkColdCoalescing: 1,000 concurrent requests for one cold key on a
// real S3 server; reports the origin GETs they caused (the target is 1).
func BenchmarkColdCoalescing(b *testing.B) {
	e := newEnv(b, nil)
	body := randBytes(256 << 10)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1000}}
	defer client.CloseIdleConnections()
	var gets int
	for i := 0; b.Loop(); i++ {
		key := fmt.Sprintf("cold-%d.bin", i)
		e.put(key, body, "")
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 1000 {
			wg.Go(func() {
				<-start
				r := doGet(b, client, http.MethodGet, e.srv.URL+"/media/"+key)
				if r.status != 200 || len(r.body) != len(body) {
					b.Errorf("status %d, %d bytes, %v", r.status, len(r.body), r.err)
				}
			})
		}
		close(start)
		wg.Wait()
		gets += e.count.count(e.bucket, key)
	}
	b.ReportMetric(float64(gets)/float64(b.N), "origin-GETs/1000-cold-requests")
}
