package certs_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/certs"
)

func TestValidName(t *testing.T) {
	good := []string{"example.com", "shop.example.test", "xn--bcher-kva.example", "a-b.c-d.io", "1.2.3.4.nip.io", "a.b"}
	bad := []string{"", "localhost", "*.example.com", "a.*.com", "127.0.0.1", "::1", "[::1]", "10.1", "1.2.3.4",
		"0x7f.1", "a..b", ".a.b", "-a.b", "a-.b", "a_b.com", "exa mple.com", "é.com", strings.Repeat("a", 64) + ".com",
		strings.Repeat("a.", 127) + "com", "a.b\x00", "::ffff:127.0.0.1", "fe80::1%eth0"}
	for _, n := range good {
		if err := certs.ValidName(n); err != nil {
			t.Errorf("ValidName(%q): %v", n, err)
		}
	}
	for _, n := range bad {
		if certs.ValidName(n) == nil {
			t.Errorf("ValidName(%q) accepted", n)
		}
	}
}

// FuzzValidName: whatever ValidName accepts is a plain DNS name: no
// wildcard, not an IP address however spelled, normalized, and usable as a
// KV path element.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"example.com", "*.example.com", "127.0.0.1", "::1", "1.2.3.4.nip.io", "0x7f.1", "A.B", "a.b.", "xn--x.y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := certs.NormalizeName(s)
		if certs.ValidName(n) != nil {
			return
		}
		if strings.ContainsAny(n, "*/\\:[]% ") {
			t.Fatalf("accepted %q", n)
		}
		if net.ParseIP(n) != nil {
			t.Fatalf("accepted IP %q", n)
		}
		if _, err := netip.ParseAddr(n); err == nil {
			t.Fatalf("accepted IP %q", n)
		}
		if certs.NormalizeName(n) != n {
			t.Fatalf("not normalized: %q", n)
		}
		if certs.ValidKey("ondemand/"+n) != nil {
			t.Fatalf("not a key element: %q", n)
		}
	})
}

// askServer allows names starting with "ok" and counts asks per name.
type askServer struct {
	*httptest.Server
	mu    sync.Mutex
	asked map[string]int
	total int
}

func newAskServer(t testing.TB) *askServer {
	a := &askServer{asked: map[string]int{}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := r.URL.Query().Get("domain")
		a.mu.Lock()
		a.asked[d]++
		a.total++
		a.mu.Unlock()
		if strings.HasPrefix(d, "ok") {
			return
		}
		w.WriteHeader(http.StatusForbidden)
	}))
	t.Cleanup(a.Close)
	return a
}

func allowedByPolicy(name string) bool { return strings.HasPrefix(name, "ok") }

// FuzzAskCache drives the asker with a sequence of (client, name) lookups
// decoded from the input and checks its invariants against the real ask
// server: a decision never contradicts the server, invalid names never
// reach it, each name is asked at most once (answers are cached), and no
// client makes more asks than its budget.
func FuzzAskCache(f *testing.F) {
	f.Add([]byte("\x00ok.a.test\n\x01no.a.test\n\x00ok.a.test\n\x02*.x.test\n\x03127.0.0.1\n"))
	f.Add([]byte("\x00a.test\n\x00b.test\n\x00c.test\n\x00d.test\n\x00ok.e.test\n"))
	f.Add([]byte("\x05ok.x.test\n\x05ok.x.test\n\x06ok.x.test\n"))
	srv := newAskServer(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		srv.mu.Lock()
		clear(srv.asked)
		srv.total = 0
		srv.mu.Unlock()
		const perClient = 3
		a, err := certs.NewAsker(certs.AskOptions{URL: srv.URL, PerClient: perClient, Global: 1000, Window: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		perClientAsks := map[netip.Addr]int{}
		for _, line := range strings.Split(string(in), "\n") {
			if len(line) < 2 {
				continue
			}
			client := netip.AddrFrom4([4]byte{10, 0, 0, line[0] % 8})
			name := certs.NormalizeName(line[1:])
			srv.mu.Lock()
			before := srv.total
			srv.mu.Unlock()
			d := a.Decide(context.Background(), name, client)
			srv.mu.Lock()
			asked := srv.total - before
			srv.mu.Unlock()
			perClientAsks[client] += asked
			valid := certs.ValidName(name) == nil
			switch d {
			case certs.DecisionInvalid:
				if valid {
					t.Fatalf("%q called invalid", name)
				}
			case certs.DecisionAllowed:
				if !valid || !allowedByPolicy(name) {
					t.Fatalf("%q allowed", name)
				}
			case certs.DecisionRefused:
				if !valid || allowedByPolicy(name) {
					t.Fatalf("%q refused", name)
				}
			case certs.DecisionRateLimited:
				if asked != 0 {
					t.Fatalf("rate-limited decision asked")
				}
			default:
				t.Fatalf("decision %q for %q", d, name)
			}
			if !valid && asked != 0 {
				t.Fatalf("invalid name %q asked", name)
			}
			if perClientAsks[client] > perClient {
				t.Fatalf("client %v made %d asks", client, perClientAsks[client])
			}
		}
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for n, c := range srv.asked {
			if c > 1 {
				t.Fatalf("%q asked %d times", n, c)
			}
		}
	})
}

// TestAskConcurrentShareOneAsk: many handshakes for one new name at once
// make one ask.
func TestAskConcurrentShareOneAsk(t *testing.T) {
	srv := newAskServer(t)
	a, err := certs.NewAsker(certs.AskOptions{URL: srv.URL, PerClient: 100, Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d := a.Decide(context.Background(), "ok.shared.test", netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})); d != certs.DecisionAllowed {
				t.Errorf("decision %q", d)
			}
		}()
	}
	wg.Wait()
	if srv.asked["ok.shared.test"] != 1 {
		t.Errorf("asked %d times", srv.asked["ok.shared.test"])
	}
	if _, err := certs.NewAsker(certs.AskOptions{URL: "ftp://x"}); err == nil {
		t.Error("bad ask URL accepted")
	}
}
