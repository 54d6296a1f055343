package transport_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/transport"
)

// patterned is n bytes that differ with their position and with seed, so a
// byte lost, doubled or reordered between responses shows.
func patterned(n, seed int) []byte {
	b := make([]byte, n)
	x := uint32(seed*2654435761 + 1)
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// sizes straddle net/http's 4 KiB buffers, a TLS record (16 KiB), a cork
// or async buffer (64 KiB) and go well past it.
var coalesceSizes = []int{0, 1, 4095, 4096, 4097, 10 << 10, 16<<10 + 1, 64 << 10, 100<<10 + 7, 1<<20 + 3}

// TestWritesCoalescedIntact: bodies of every size, many at once, over
// HTTP/1.1 (corked writes) and HTTP/2 (the async writer) on real TLS
// connections, arrive whole and in order, with the Date header set by the
// transport; written in one Write or in odd pieces.
func TestWritesCoalescedIntact(t *testing.T) {
	ts := startServer(t, false, http.NotFoundHandler(), nil, func(s *transport.Server) {
		s.Handle("GET /blob/{n}/{seed}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n, _ := strconv.Atoi(r.PathValue("n"))
			seed, _ := strconv.Atoi(r.PathValue("seed"))
			b := patterned(n, seed)
			w.Header().Set("Content-Length", strconv.Itoa(n))
			if r.URL.Query().Has("pieces") {
				for len(b) > 0 {
					k := min(len(b), 3001)
					if _, err := w.Write(b[:k]); err != nil {
						return
					}
					b = b[k:]
				}
				return
			}
			_, _ = w.Write(b)
		}))
	})
	for _, c := range []struct {
		name  string
		c     *http.Client
		major int
	}{{"h1", h1Client(), 1}, {"h2", h2Client(), 2}} {
		t.Run(c.name, func(t *testing.T) {
			defer c.c.CloseIdleConnections()
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for g := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i, n := range coalesceSizes {
						seed := g*100 + i
						q := ""
						if (g+i)%2 == 1 {
							q = "?pieces"
						}
						resp, err := c.c.Get(fmt.Sprintf("https://%s/blob/%d/%d%s", ts.addr, n, seed, q))
						if err != nil {
							errs <- err
							return
						}
						got, err := io.ReadAll(resp.Body)
						resp.Body.Close()
						switch {
						case err != nil:
							errs <- fmt.Errorf("%d bytes: %w", n, err)
						case resp.ProtoMajor != c.major:
							errs <- fmt.Errorf("protocol %s", resp.Proto)
						case !bytes.Equal(got, patterned(n, seed)):
							errs <- fmt.Errorf("%d bytes (seed %d): body differs (got %d bytes)", n, seed, len(got))
						case resp.Header.Get("Date") == "":
							errs <- fmt.Errorf("%d bytes: no Date header", n)
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

// TestAsyncWriterShutdown: a graceful Shutdown while a large HTTP/2
// response is in flight lets it finish whole: the async writer's held
// bytes and the final GOAWAY leave before the connection closes.
func TestAsyncWriterShutdown(t *testing.T) {
	body := patterned(4<<20, 7)
	started := make(chan struct{})
	ts := startServer(t, false, http.NotFoundHandler(), nil, func(s *transport.Server) {
		s.Handle("GET /big", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = w.Write(body[:1<<20])
			close(started)
			_, _ = w.Write(body[1<<20:])
		}))
	})
	c := h2Client()
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + ts.addr + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- ts.srv.Shutdown(ctx) }()
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, body) || resp.ProtoMajor != 2 {
		t.Fatalf("got %d of %d bytes over %s, err %v", len(got), len(body), resp.Proto, err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}
