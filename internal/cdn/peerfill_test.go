package cdn

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/testkit"
)

// fleet is three real caches over one real S3 origin (versitygw, every GET
// counted), each with its public route and its peer route on a real HTTP
// server on loopback. The peer servers are plain HTTP here: the node puts
// the peer route behind mutual TLS; what is tested is the fill.
type fleet struct {
	t     testing.TB
	e     *env // the origin, its bucket and the GET counter
	nodes []*fleetNode
	mu    sync.Mutex
	peers map[string]http.Handler // node → what its peer server does
}

type fleetNode struct {
	id    string
	cache *Cache
	srv   *httptest.Server // public
	peer  *httptest.Server // peer route
	reg   *prometheus.Registry
}

// fleetPeers is one node's view: all three nodes, one region.
type fleetPeers struct {
	f    *fleet
	self string
	hp   HTTPPeers
}

func (p *fleetPeers) Nodes() []PeerNode {
	var out []PeerNode
	for _, n := range p.f.nodes {
		out = append(out, PeerNode{ID: n.id, Region: "eu", Self: n.id == p.self})
	}
	return out
}

func (p *fleetPeers) Get(ctx context.Context, node, key string) (*http.Response, error) {
	return p.hp.Get(ctx, node, key)
}

func newFleet(t testing.TB, firstByte time.Duration) *fleet {
	return newFleetPeers(t, firstByte, true)
}

// newFleetPeers: without peers, each cache fills from the origin alone
// (as before peer fill).
func newFleetPeers(t testing.TB, firstByte time.Duration, peers bool) *fleet {
	f := &fleet{t: t, e: newEnv(t, nil), peers: map[string]http.Handler{}}
	for i := range 3 {
		n := &fleetNode{id: fmt.Sprintf("n%d", i), reg: prometheus.NewRegistry()}
		f.nodes = append(f.nodes, n)
	}
	for _, n := range f.nodes {
		fp := &fleetPeers{f: f, self: n.id}
		fp.hp = HTTPPeers{
			BaseURL: func(id string) (string, bool) {
				for _, m := range f.nodes {
					if m.id == id {
						return m.peer.URL + "/peer/", true
					}
				}
				return "", false
			},
			Client: &http.Client{},
		}
		log, _ := testkit.Logger(t)
		po := PeerOptions{Peers: fp, FirstByte: firstByte, ETagIsMD5: true}
		if !peers {
			po = PeerOptions{}
		}
		c, err := New(Options{Dir: t.TempDir(), Origin: f.e.origin, OriginTimeout: 5 * time.Second, Peer: po},
			log.With("node", n.id), n.reg)
		if err != nil {
			t.Fatal(err)
		}
		n.cache = c
		mux := http.NewServeMux()
		for p, h := range c.Routes() {
			mux.Handle(p, h)
		}
		n.srv = httptest.NewServer(mux)
		pmux := http.NewServeMux()
		pmux.Handle("GET /peer/{key...}", c.PeerHandler())
		f.peers[n.id] = pmux
		id := n.id
		n.peer = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.mu.Lock()
			h := f.peers[id]
			f.mu.Unlock()
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(func() {
			n.srv.Close()
			n.peer.Close()
			c.Close()
		})
	}
	return f
}

// setPeer replaces what node id's peer route does.
func (f *fleet) setPeer(id string, h func(orig http.Handler) http.Handler) {
	f.mu.Lock()
	f.peers[id] = h(f.peers[id])
	f.mu.Unlock()
}

func (f *fleet) get(n *fleetNode, key string) resp {
	f.t.Helper()
	return doGet(f.t, n.srv.Client(), http.MethodGet, n.srv.URL+"/media/"+key)
}

func (f *fleet) owner(key string) *fleetNode {
	p := (&fleetPeers{f: f}).Nodes()
	o, _ := Owner(key, "eu", p)
	for _, n := range f.nodes {
		if n.id == o.ID {
			return n
		}
	}
	panic("no owner")
}

func (f *fleet) other(key string) *fleetNode {
	o := f.owner(key)
	for _, n := range f.nodes {
		if n != o {
			return n
		}
	}
	panic("no other")
}

func peerCount(n *fleetNode, result string) float64 {
	return testutil.ToFloat64(n.cache.m.peerFills.WithLabelValues(result))
}

// Cold caches on three nodes, the same keys asked on all of them at once:
// the origin sees one GET per key, and every node serves the right bytes.
func TestPeerFillOneOriginGETPerKey(t *testing.T) {
	f := newFleet(t, 5*time.Second)
	const keys = 12
	bodies := map[string][]byte{}
	for i := range keys {
		k := "img/" + strconv.Itoa(i) + ".jpg"
		bodies[k] = randBytes(20_000 + i*9_000)
		f.e.put(k, bodies[k], "image/jpeg")
	}
	var wg sync.WaitGroup
	errs := make(chan error, keys*3)
	for k, want := range bodies {
		for _, n := range f.nodes {
			wg.Go(func() {
				r := f.get(n, k)
				if r.status != 200 || r.err != nil || !bytes.Equal(r.body, want) {
					errs <- fmt.Errorf("%s on %s: status %d, err %v, %d bytes (want %d)", k, n.id, r.status, r.err, len(r.body), len(want))
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total := 0
	for k := range bodies {
		c := f.e.count.count(f.e.bucket, k)
		total += c
		if c != 1 {
			t.Errorf("%s: %d origin GETs, want 1", k, c)
		}
	}
	var ok float64
	for _, n := range f.nodes {
		ok += peerCount(n, peerOK)
	}
	// Each key: the two nodes that do not own it filled from the owner.
	if ok != 2*keys {
		t.Errorf("peer fills ok = %v, want %d", ok, 2*keys)
	}
	t.Logf("origin GETs per key: %.2f", float64(total)/keys)
}

// The owner dead (its peer route refuses connections) or slow (no answer
// within FirstByte): the asker fills from the origin, and says why.
func TestPeerFillFallsBackToOrigin(t *testing.T) {
	f := newFleet(t, 300*time.Millisecond)
	body := randBytes(50_000)
	f.e.put("dead.bin", body, "")

	// Dead: the owner's peer server is closed.
	o, a := f.owner("dead.bin"), f.other("dead.bin")
	o.peer.Close()
	if r := f.get(a, "dead.bin"); r.status != 200 || !bytes.Equal(r.body, body) {
		t.Fatalf("dead owner: status %d, %d bytes", r.status, len(r.body))
	}
	if v := peerCount(a, peerUnreachable); v != 1 {
		t.Errorf("peer fills unreachable = %v, want 1", v)
	}

	// Slow: the owner's peer route holds the request until the asker
	// gives up on it. The key is one a live node owns.
	dead := o.id
	for i := range 100 {
		k := "slow" + strconv.Itoa(i) + ".bin"
		if f.owner(k).id != dead {
			f.e.put(k, body, "")
			f.slowCase(t, f.owner(k), f.other(k), k, body)
			return
		}
	}
	t.Fatal("no key owned by a live node")
}

func (f *fleet) slowCase(t *testing.T, o, a *fleetNode, key string, body []byte) {
	f.setPeer(o.id, func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	})
	if r := f.get(a, key); r.status != 200 || !bytes.Equal(r.body, body) {
		t.Fatalf("slow owner: status %d, %d bytes", r.status, len(r.body))
	}
	if v := peerCount(a, peerSlow); v != 1 {
		t.Errorf("peer fills slow = %v, want 1", v)
	}
	if c := f.e.count.count(f.e.bucket, key); c != 1 {
		t.Errorf("%d origin GETs, want 1 (the asker's fallback)", c)
	}
}

// The owner answers, but not with a copy: an error status (500), a 404 for
// a key the origin has (say, a negative entry of its own), or a 200
// without the fetch time (wrong bytes, which must not be used). The asker
// fills from the origin, counts the fallback as an error, and caches the
// origin's object, not the owner's answer: the next request is a hit with
// the right bytes and no further origin GET.
func TestPeerFillOwnerErrorFallsBackToOrigin(t *testing.T) {
	cases := []struct {
		name  string
		owner http.HandlerFunc
	}{
		{"500", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "owner broken", http.StatusInternalServerError)
		}},
		{"404", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(HeaderFetchedAt, time.Now().UTC().Format(time.RFC3339Nano))
			http.NotFound(w, r)
		}},
		{"200 without fetch time", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "5")
			w.Write([]byte("wrong"))
		}},
	}
	f := newFleet(t, 5*time.Second)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := "err" + strconv.Itoa(i) + ".bin"
			body := randBytes(40_000)
			f.e.put(key, body, "application/octet-stream")
			o, a := f.owner(key), f.other(key)
			asked := 0
			f.setPeer(o.id, func(http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					f.mu.Lock()
					asked++
					f.mu.Unlock()
					tc.owner(w, r)
				})
			})
			before, okBefore := peerCount(a, peerError), peerCount(a, peerOK)
			r := f.get(a, key)
			if r.status != 200 || r.err != nil || !bytes.Equal(r.body, body) {
				t.Fatalf("owner answering %s: status %d, err %v, %d bytes (want %d)", tc.name, r.status, r.err, len(r.body), len(body))
			}
			f.mu.Lock()
			n := asked
			f.mu.Unlock()
			if n != 1 {
				t.Errorf("owner asked %d times, want 1", n)
			}
			if v := peerCount(a, peerError) - before; v != 1 {
				t.Errorf("peer fills error = %v, want 1", v)
			}
			if v := peerCount(a, peerOK) - okBefore; v != 0 {
				t.Errorf("peer fills ok = %v, want 0", v)
			}
			if c := f.e.count.count(f.e.bucket, key); c != 1 {
				t.Errorf("%d origin GETs, want 1 (the asker's fallback)", c)
			}
			// What was cached is the origin's object: a hit, right bytes.
			waitIdle(t, a.cache)
			r = f.get(a, key)
			if r.status != 200 || r.err != nil || !bytes.Equal(r.body, body) {
				t.Fatalf("again: status %d, err %v, %d bytes (want %d)", r.status, r.err, len(r.body), len(body))
			}
			if x := r.header.Get("X-Cache"); x != "HIT" {
				t.Errorf("again: X-Cache %q, want a hit", x)
			}
			if c := f.e.count.count(f.e.bucket, key); c != 1 {
				t.Errorf("again: %d origin GETs, want still 1", c)
			}
			f.mu.Lock()
			n = asked
			f.mu.Unlock()
			if n != 1 {
				t.Errorf("again: owner asked %d times, want still 1", n)
			}
		})
	}
}

// A peer that sends the right length but wrong bytes: the asker's fill
// fails its MD5 check (no client gets a complete bad copy), is counted,
// and the next request fills from the origin with the right bytes.
func TestPeerFillRefusesCorruptCopy(t *testing.T) {
	f := newFleet(t, 5*time.Second)
	body := randBytes(300_000)
	f.e.put("c.bin", body, "")
	o, a := f.owner("c.bin"), f.other("c.bin")
	f.setPeer(o.id, func(orig http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rec := httptest.NewRecorder()
			orig.ServeHTTP(rec, r)
			b := rec.Body.Bytes()
			b[len(b)/2] ^= 0xff
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(b)
		})
	})
	r := f.get(a, "c.bin")
	if r.err == nil && bytes.Equal(r.body, body) {
		t.Fatal("a corrupt peer copy was served whole")
	}
	if r.err == nil && r.status == 200 && len(r.body) == len(body) {
		t.Fatal("a corrupt peer copy reached a client complete")
	}
	if v := peerCount(a, peerCorrupt); v != 1 {
		t.Errorf("peer fills corrupt = %v, want 1", v)
	}
	waitIdle(t, a.cache)
	r = f.get(a, "c.bin")
	if r.status != 200 || !bytes.Equal(r.body, body) {
		t.Fatalf("after a corrupt peer copy: status %d, %d bytes, err %v", r.status, len(r.body), r.err)
	}
	// One GET by the owner (for its own copy), one by the asker.
	if c := f.e.count.count(f.e.bucket, "c.bin"); c != 2 {
		t.Errorf("%d origin GETs, want 2", c)
	}
}

// A node that purged a key refuses a peer's copy fetched before the purge
// (the owner had not heard of it yet) and fills from the origin.
func TestPeerFillRespectsPurge(t *testing.T) {
	f := newFleet(t, 5*time.Second)
	f.e.put("p.txt", []byte("old"), "text/plain")
	o, a := f.owner("p.txt"), f.other("p.txt")
	if r := f.get(o, "p.txt"); string(r.body) != "old" {
		t.Fatalf("owner: %q", r.body)
	}
	f.e.put("p.txt", []byte("new!"), "text/plain")
	if err := a.cache.Purge("p.txt"); err != nil { // the owner misses this purge
		t.Fatal(err)
	}
	if r := f.get(a, "p.txt"); string(r.body) != "new!" {
		t.Fatalf("after the purge: %q, want the origin's new copy", r.body)
	}
	if v := peerCount(a, peerStale); v != 1 {
		t.Errorf("peer fills stale = %v, want 1", v)
	}
}

// waitIdle waits for c's fills to end (bounded).
func waitIdle(t *testing.T, c *Cache) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.running.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("fills still running")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestOwnerRendezvous(t *testing.T) {
	nodes := []PeerNode{{ID: "a", Region: "eu"}, {ID: "b", Region: "eu"}, {ID: "c", Region: "us"}}
	counts := map[string]int{}
	for i := range 3000 {
		o, ok := Owner("k"+strconv.Itoa(i), "eu", nodes)
		if !ok || o.Region != "eu" {
			t.Fatalf("owner %+v outside the region", o)
		}
		counts[o.ID]++
		// Removing a node that is not the owner never moves the key.
		if o2, _ := Owner("k"+strconv.Itoa(i), "eu", []PeerNode{o, nodes[2]}); o2.ID != o.ID {
			t.Fatalf("key moved when another node left")
		}
	}
	if counts["a"] < 1200 || counts["b"] < 1200 {
		t.Errorf("unbalanced: %v", counts)
	}
	if o, _ := Owner("x", "ap", nodes); o.ID == "" {
		t.Error("no owner when no node is in the region")
	}
}

// BenchmarkPeerFill (make bench, section peerfill): three caches over a
// real S3 server (versitygw), cold, the same 200 keys of 32 KiB asked on
// all three at once: origin GETs per key without peer fill and with it,
// and the median time to first byte of a miss filled from a peer against
// one filled from S3.
func BenchmarkPeerFill(b *testing.B) {
	const keys = 200
	for b.Loop() {
		for _, peers := range []bool{false, true} {
			f := newFleetPeers(b, 5*time.Second, peers)
			body := randBytes(32 << 10)
			names := make([]string, keys)
			for i := range names {
				names[i] = "bench/" + strconv.Itoa(i)
				f.e.put(names[i], body, "image/jpeg")
			}
			sem := make(chan struct{}, 8)
			var wg sync.WaitGroup
			for _, k := range names {
				for _, n := range f.nodes {
					sem <- struct{}{}
					wg.Go(func() {
						defer func() { <-sem }()
						if r := f.get(n, k); r.status != 200 || len(r.body) != len(body) {
							b.Errorf("%s on %s: %d, %d bytes", k, n.id, r.status, len(r.body))
						}
					})
				}
			}
			wg.Wait()
			gets := 0
			for _, k := range names {
				gets += f.e.count.count(f.e.bucket, k)
			}
			name := "before"
			if peers {
				name = "after"
			}
			b.ReportMetric(float64(gets)/keys, "s3-gets/key-"+name)

			// Time to first byte of a cold miss: on a node that does not
			// own the key, whose owner already holds it (a peer fill), or
			// with peer fill off (an S3 fill).
			var ttfb []time.Duration
			for i := range 40 {
				k := "ttfb/" + strconv.Itoa(i)
				f.e.put(k, body, "image/jpeg")
				if peers {
					f.get(f.owner(k), k)
				}
				n := f.other(k)
				start := time.Now()
				res, err := n.srv.Client().Get(n.srv.URL + "/media/" + k)
				if err != nil {
					b.Fatal(err)
				}
				var one [1]byte
				io.ReadFull(res.Body, one[:])
				ttfb = append(ttfb, time.Since(start))
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
			slices.Sort(ttfb)
			src := "s3"
			if peers {
				src = "peer"
			}
			b.ReportMetric(float64(ttfb[len(ttfb)/2].Microseconds()), "ttfb-us-"+src)
		}
	}
}
