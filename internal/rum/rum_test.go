package rum

import (
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTable(t testing.TB, c *clock, o Options) *Table {
	t.Helper()
	o.Now = c.now
	tb, err := New(o, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func TestSketchMedian(t *testing.T) {
	var s sketch
	for _, ms := range []float64{10, 11, 12, 200, 9} {
		s.add(ms, 1)
	}
	if m := s.median(); m < 9 || m > 13.5 {
		t.Errorf("median of 9..12 and one 200: %v", m)
	}
	var e sketch
	if e.median() != 0 {
		t.Error("empty sketch has a median")
	}
	if bucketOf(0.1) != 0 || bucketOf(1e9) != numBuckets-1 {
		t.Error("out-of-range values not clamped")
	}
}

// TestPreference: a network prefers the node with the lower median once
// two nodes have MinSamples each; not before; and no longer once the
// samples have decayed below MinSamples.
func TestPreference(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	tb := newTable(t, c, Options{MinSamples: 5, HalfLife: time.Hour})
	client := netip.MustParseAddr("198.51.100.7")
	neighbour := netip.MustParseAddr("198.51.100.200") // same /24
	for i := range 4 {
		tb.Record(client, []Sample{{"near-map", 90 + float64(i)}, {"far-map", 12}})
	}
	tb.rebuild()
	if p := tb.Prefer(client); p != nil {
		t.Fatalf("preference with 4 samples (min 5): %v", p)
	}
	tb.Record(neighbour, []Sample{{"near-map", 95}, {"far-map", 11}})
	tb.rebuild()
	if p := tb.Prefer(client); !slices.Equal(p, []string{"far-map", "near-map"}) {
		t.Fatalf("prefer %v, want far-map first", p)
	}
	if p := tb.Prefer(netip.MustParseAddr("198.51.101.7")); p != nil {
		t.Errorf("another /24 got %v", p)
	}
	prefs := tb.Preferences()
	if len(prefs) != 1 || prefs[0].Network != netip.MustParsePrefix("198.51.100.0/24") || prefs[0].Nodes[0].MedianMS > 14 {
		t.Errorf("preferences %+v", prefs)
	}
	c.t = c.t.Add(2 * time.Hour) // weight 5 -> 1.25
	tb.rebuild()
	if p := tb.Prefer(client); p != nil {
		t.Errorf("decayed samples still prefer %v", p)
	}
	// IPv6 clients count per /48.
	a6, b6 := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:ffff::9")
	for range 5 {
		tb.Record(a6, []Sample{{"x", 40}, {"y", 20}})
	}
	tb.rebuild()
	if p := tb.Prefer(b6); !slices.Equal(p, []string{"y", "x"}) {
		t.Errorf("IPv6 /48: %v", p)
	}
}

// TestDigestMerge: a peer's digest counts with the node's own samples, a
// newer digest replaces the older one (nothing counted twice), and a
// digest from a peer that went quiet expires.
func TestDigestMerge(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	a := newTable(t, c, Options{MinSamples: 6, ShareInterval: 10 * time.Second})
	b := newTable(t, c, Options{MinSamples: 6, ShareInterval: 10 * time.Second})
	client := netip.MustParseAddr("203.0.113.9")
	for range 4 {
		a.Record(client, []Sample{{"n1", 50}, {"n2", 5}})
		b.Record(client, []Sample{{"n1", 50}, {"n2", 5}})
	}
	for range 2 {
		if err := b.Merge("a", a.Digest()); err != nil {
			t.Fatal(err)
		}
	}
	b.rebuild()
	p := b.Preferences()
	if len(p) != 1 || p[0].Nodes[0].ID != "n2" || p[0].Nodes[0].Samples != 8 {
		t.Fatalf("merged: %+v (want n2 first with 8 samples: 4 own + 4 of a's, once)", p)
	}
	c.t = c.t.Add(41 * time.Second)
	b.rebuild()
	if p := b.Prefer(client); p != nil {
		t.Errorf("expired digest still counts: %v", p)
	}
	if err := b.Merge("a", []byte{1, 1, 4, 1, 2}); err == nil {
		t.Error("truncated digest accepted")
	}
}

// TestMemoryBound: however many networks and nodes beacons name, the
// table keeps MaxNetworks networks of at most MaxNodesPerNetwork nodes,
// within BytesPerNetwork each.
func TestMemoryBound(t *testing.T) {
	const max = 2000
	c := &clock{t: time.Unix(1e9, 0)}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tb := newTable(t, c, Options{MaxNetworks: max})
	ids := make([]string, 3*MaxNodesPerNetwork)
	for i := range ids {
		ids[i] = fmt.Sprintf("node-%02d-with-a-longish-id", i)
	}
	for i := range 3 * max {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
		for j := range ids {
			// A fresh id string each time, as decoded from a beacon.
			tb.Record(a, []Sample{{strings.Clone(ids[j]), float64(1 + i%1000)}})
		}
	}
	if n := tb.Len(); n != max {
		t.Fatalf("%d networks kept, want %d", n, max)
	}
	tb.mu.Lock()
	for _, p := range tb.local.Keys() {
		if n, _ := tb.local.Peek(p); len(n.nodes) > MaxNodesPerNetwork {
			t.Fatalf("%v keeps %d nodes", p, len(n.nodes))
		}
	}
	tb.mu.Unlock()
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d networks x %d nodes: %d bytes (%d per network)", max, MaxNodesPerNetwork, grew, grew/max)
	if grew > max*BytesPerNetwork {
		t.Errorf("table takes %d bytes, more than the documented %d per network", grew, BytesPerNetwork)
	}
	runtime.KeepAlive(tb)
}

// TestBeaconEndpoint: the HTTP side over a real socket: the RTT route's
// headers, a good beacon recorded for the client's /24, and every limit
// answered with a clear error.
func TestBeaconEndpoint(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	tb := newTable(t, c, Options{MinSamples: 1})
	mux := http.NewServeMux()
	mux.Handle("GET "+RTTPath, RTTHandler())
	mux.Handle("POST "+BeaconPath, tb.BeaconHandler(func(id string) bool { return id != "ghost" }))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, err := http.Get(srv.URL + RTTPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := resp.Header
	if resp.StatusCode != 204 || h.Get("Cache-Control") != "no-store" || h.Get("Access-Control-Allow-Origin") != "*" ||
		h.Get("Set-Cookie") != "" || h.Get("Timing-Allow-Origin") != "*" {
		t.Errorf("rtt: %d %v", resp.StatusCode, h)
	}
	post := func(body string) int {
		t.Helper()
		resp, err := http.Post(srv.URL+BeaconPath, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Errorf("beacon answer without CORS header")
		}
		return resp.StatusCode
	}
	for body, want := range map[string]int{
		`{"a":12.5,"b":80}`:               204,
		`{"ghost":3}`:                     204, // unknown nodes are dropped, not an error
		`{"a":0}`:                         400,
		`{"a":-1}`:                        400,
		`{"a":30001}`:                     400,
		`{"a":"12"}`:                      400,
		`{"a":1,"a":2}`:                   400,
		`{"a":1,"b":1,"c":1,"d":1,"e":1}`: 400,
		`{"not an id!":1}`:                400,
		`[1,2]`:                           400,
		`{"a":1} {}`:                      400,
		`{}`:                              400,
		`{"a":1e400}`:                     400,
		`{"a":1` + strings.Repeat(" ", 600) + `}`: 413,
	} {
		if got := post(body); got != want {
			t.Errorf("POST %.40q: %d, want %d", body, got, want)
		}
	}
	tb.rebuild()
	if p := tb.Prefer(netip.MustParseAddr("127.0.0.99")); !slices.Equal(p, []string{"a", "b"}) {
		t.Errorf("loopback /24 prefers %v", p)
	}
}

func FuzzParseBeacon(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"fra-1":12.5,"nyc-2":80}`, `{"a":1,"a":2}`, `{"a":1e308}`, `{`, `{"a":[1]}`,
		`{"a":1,"b":2,"c":3,"d":4}`, `{"a":NaN}`, `null`, `{"a":1}x`, "{\"\xff\":1}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseBeacon(b)
		if err != nil {
			return
		}
		if len(s) == 0 || len(s) > MaxBeaconEntries {
			t.Fatalf("%d entries accepted", len(s))
		}
		for _, x := range s {
			if !(x.MS > 0 && x.MS <= MaxMS) || math.IsNaN(x.MS) {
				t.Fatalf("value %v accepted", x.MS)
			}
		}
	})
}

func FuzzDecodeDigest(f *testing.F) {
	c := &clock{t: time.Unix(1e9, 0)}
	tb := newTable(f, c, Options{})
	tb.Record(netip.MustParseAddr("192.0.2.1"), []Sample{{"a", 10}, {"b", 300}})
	tb.Record(netip.MustParseAddr("2001:db8::1"), []Sample{{"a", 10}})
	f.Add(tb.Digest())
	f.Add([]byte{1, 0})
	f.Add([]byte{1, 1, 4, 1, 2, 3, 1, 1, 'a', 1, 0, 0x3f, 0x80, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		nets, err := decodeDigest(b, 100)
		if err != nil {
			return
		}
		if len(nets) > 100 {
			t.Fatal("more networks than allowed")
		}
		for _, n := range nets {
			if len(n.nodes) == 0 || len(n.nodes) > MaxNodesPerNetwork {
				t.Fatalf("%d nodes", len(n.nodes))
			}
		}
		// What decodes re-encodes to something that decodes the same.
		var dn []digestNet
		for p, n := range nets {
			dn = append(dn, digestNet{p: p, nodes: n.nodes})
		}
		again, err := decodeDigest(encodeDigest(dn), 100)
		if err != nil || len(again) != len(nets) {
			t.Fatalf("re-encoded digest: %v", err)
		}
	})
}
