package transport

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

type fastStub struct{ http.Handler }

func (fastStub) AppendFast(dst []byte, _, _ string) ([]byte, []byte, bool) { return dst, nil, false }
func (fastStub) AppendFastBlock(dst []byte, _, _ string) ([]byte, []byte, bool) {
	return dst, nil, false
}

// TestRouteCacheAgreesWithServeMux: for every request the fast paths may
// see, the route cache gives what ServeMux gives, the first time and from
// the cache, with more distinct keys than the table has slots (so slots
// are replaced), host-specific and method-specific patterns, redirects and
// keys too long to cache.
func TestRouteCacheAgreesWithServeMux(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	certFile, keyFile, err := EnsureSelfSigned(dir, []string{"example.test"}, log)
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewFromFiles(ln, certFile, keyFile, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s.Handle("GET /media/{key...}", fastStub{http.NotFoundHandler()})
	s.Handle("static.example.test/media/", fastStub{http.NotFoundHandler()})
	s.Handle("HEAD /only-head/", fastStub{http.NotFoundHandler()})
	s.Handle("/v1/", http.NotFoundHandler())
	s.Handle("/tree/", fastStub{http.NotFoundHandler()}) // "/tree" redirects
	long := make([]byte, routeKeyMax)
	for i := range long {
		long[i] = 'a'
	}
	var paths []string
	for i := range 3 * routeSlots {
		paths = append(paths, fmt.Sprintf("/media/k%d", i))
	}
	paths = append(paths, "/v1/publish", "/tree", "/tree/x", "/only-head/x", "/", "/media/"+string(long))
	for round := range 2 {
		for _, host := range []string{"example.test", "static.example.test", "example.test:8443"} {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				for _, p := range paths {
					want := s.muxFastRoute(method, host, p)
					if got := s.fastRouteFor(method, host, p); got != want {
						t.Fatalf("round %d: %s %s%s: cache %p, ServeMux %p", round, method, host, p, got, want)
					}
				}
			}
		}
	}
	if s.fastRouteFor(http.MethodGet, "static.example.test", "/media/a") == s.fastRouteFor(http.MethodGet, "example.test", "/media/a") {
		t.Fatal("the host-specific pattern did not win")
	}
	if s.fastRouteFor(http.MethodGet, "example.test", "/only-head/x") != nil || s.fastRouteFor(http.MethodHead, "example.test", "/only-head/x") == nil {
		t.Fatal("method-specific pattern")
	}
}
