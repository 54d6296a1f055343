package geoindex_test

import (
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/dns/geoindex"
	"github.com/edgenode/edgenode/internal/dns/geoindex/geotest"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func testDB(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "city.mmdb")
	err := geotest.Write(path, []geotest.Network{
		{Prefix: pfx("192.0.2.0/26"), Place: geotest.Paris},
		{Prefix: pfx("192.0.2.64/26"), Place: geotest.Seattle},
		{Prefix: pfx("198.51.100.0/25"), Place: geotest.Tokyo},
		{Prefix: pfx("203.0.113.0/24"), Place: geotest.Tokyo, CountryOnly: true},
		{Prefix: pfx("2001:db8:1::/48"), Place: geotest.Paris},
		{Prefix: pfx("2001:db8:6::/48"), Place: geotest.Sydney},
		{Prefix: pfx("2001:db8:7::/120"), Place: geotest.Seattle},
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLookup(t *testing.T) {
	ix, err := geoindex.Build(testDB(t), []geoindex.Override{
		{Prefix: pfx("192.0.2.128/25"), Location: geoindex.Location{Lat: 1, Lon: 2, HasCoords: true}},
		// More specific than a database network: wins.
		{Prefix: pfx("198.51.100.7/32"), Location: geoindex.Location{Country: [2]byte{'B', 'R'}}},
		{Prefix: pfx("::ffff:198.51.100.8/126"), Location: geoindex.Location{Lat: 3, Lon: 4, HasCoords: true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		lat, lon float64
		bits     int
		cc       string
	}
	cases := map[string]*want{
		"192.0.2.1":          {geotest.Paris.Lat, geotest.Paris.Lon, 26, "FR"},
		"192.0.2.63":         {geotest.Paris.Lat, geotest.Paris.Lon, 26, "FR"},
		"192.0.2.64":         {geotest.Seattle.Lat, geotest.Seattle.Lon, 26, "US"},
		"::ffff:192.0.2.65":  {geotest.Seattle.Lat, geotest.Seattle.Lon, 26, "US"},
		"192.0.2.200":        {1, 2, 25, ""},
		"198.51.100.7":       {-23.5, -46.6, 32, "BR"}, // country centroid
		"198.51.100.9":       {3, 4, 30, ""},
		"198.51.100.12":      {geotest.Tokyo.Lat, geotest.Tokyo.Lon, 25, "JP"},
		"203.0.113.5":        {35.7, 139.7, 24, "JP"}, // country layout: centroid
		"2001:db8:1::1":      {geotest.Paris.Lat, geotest.Paris.Lon, 48, "FR"},
		"2001:db8:1:ffff::1": {geotest.Paris.Lat, geotest.Paris.Lon, 48, "FR"},
		"2001:db8:6::":       {geotest.Sydney.Lat, geotest.Sydney.Lon, 48, "AU"},
		"2001:db8:7::ff":     {geotest.Seattle.Lat, geotest.Seattle.Lon, 120, "US"},
		"2001:db8:7::100":    nil,
		"2001:db8:2::1":      nil,
		"192.0.3.1":          nil,
		"10.0.0.1":           nil,
		"::1":                nil,
	}
	for a, w := range cases {
		loc, bits, ok := ix.Lookup(addr(a))
		if w == nil {
			if ok {
				t.Errorf("%s: found %v, want miss", a, ix.Location(loc))
			}
			continue
		}
		if !ok {
			t.Errorf("%s: miss", a)
			continue
		}
		l := ix.Location(loc)
		if !l.HasCoords || math.Abs(float64(l.Lat)-w.lat) > 0.01 || math.Abs(float64(l.Lon)-w.lon) > 0.01 ||
			bits != w.bits || string(l.Country[:]) != w.cc && w.cc != "" {
			t.Errorf("%s: got %+v /%d, want %+v", a, l, bits, *w)
		}
	}
	st := ix.Stats()
	if st.Networks4 != 4 || st.Networks6 != 3 || st.Overrides != 3 {
		t.Errorf("stats %+v", st)
	}
	// Paris is shared by two networks: one location; 5 places + 3 overrides.
	if ix.NumLocations() != 8 {
		t.Errorf("locations = %d, want 8", ix.NumLocations())
	}
}

func TestNoDatabase(t *testing.T) {
	ix, err := geoindex.Build("", []geoindex.Override{{Prefix: pfx("10.0.0.0/8"), Location: geoindex.Location{Lat: 5, Lon: 6, HasCoords: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, bits, ok := ix.Lookup(addr("10.1.2.3")); !ok || bits != 8 {
		t.Fatalf("override miss")
	}
	if _, _, ok := ix.Lookup(addr("11.1.2.3")); ok {
		t.Fatalf("hit without database")
	}
}

func TestBadDatabase(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.mmdb")
	if err := os.WriteFile(bad, []byte("not a database"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := geoindex.Build(bad, nil); err == nil {
		t.Fatal("no error for a bad database")
	}
	if _, err := geoindex.Build(filepath.Join(dir, "missing.mmdb"), nil); err == nil {
		t.Fatal("no error for a missing database")
	}
	// A truncated real database errors, never panics.
	good, err := os.ReadFile(testDB(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{len(good) / 2, len(good) - 20, 100} {
		_, _ = geoindex.BuildBytes(good[:n], nil)
	}
}

// FuzzBuildBytes feeds corrupt databases to the builder: an operator's file
// may be half-written or damaged; the build must fail, not crash.
func FuzzBuildBytes(f *testing.F) {
	dir := f.TempDir()
	path := filepath.Join(dir, "city.mmdb")
	if err := geotest.Write(path, []geotest.Network{
		{Prefix: pfx("192.0.2.0/26"), Place: geotest.Paris},
		{Prefix: pfx("2001:db8:1::/48"), Place: geotest.Sydney},
	}); err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("\xAB\xCD\xEFMaxMind.com"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := geoindex.BuildBytes(data, nil)
		if err == nil {
			ix.Lookup(addr("192.0.2.1"))
			ix.Lookup(addr("2001:db8:1::1"))
		}
	})
}

// BenchmarkBuildCitySized builds the index from a generated database the
// size of GeoLite2-City (3.5 million networks, 150k places). The database is
// written into a temporary directory first (~30 s), or, if $GEOINDEX_BENCH_DB
// names a file, generated there once and reused by later runs. Reported:
// build time per op, peak heap during the build, and the heap the index
// keeps.
func BenchmarkBuildCitySized(b *testing.B) {
	path := os.Getenv("GEOINDEX_BENCH_DB")
	if path == "" {
		path = filepath.Join(b.TempDir(), "synthetic-city.mmdb")
	}
	if _, err := os.Stat(path); err != nil {
		t0 := time.Now()
		st, err := geotest.WriteSynthetic(path, 3_500_000, 150_000, 1)
		if err != nil {
			b.Fatal(err)
		}
		fi, _ := os.Stat(path)
		b.Logf("generated %d IPv4 + %d IPv6 networks, %d places, %d MiB in %v",
			st.Networks4, st.Networks6, st.Places, fi.Size()>>20, time.Since(t0).Round(time.Millisecond))
	}
	runtime.GC()
	var peak, retained uint64
	var ix *geoindex.Index
	for b.Loop() {
		ix = nil
		runtime.GC()
		base := heapBytes()
		stop := samplePeak(&peak)
		var err error
		ix, err = geoindex.Build(path, nil)
		stop()
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		retained = heapBytes() - base
		peak -= min(peak, base)
	}
	st := ix.Stats()
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	b.ReportMetric(float64(retained)/(1<<20), "index-heap-MiB")
	b.ReportMetric(float64(st.Networks4+st.Networks6), "networks")
	b.Logf("index: %d+%d networks, %d records, %d locations, built in %v",
		st.Networks4, st.Networks6, st.Records, st.Locations, st.Duration.Round(time.Millisecond))
}

func heapBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// samplePeak records the largest heap seen until the returned func is called.
func samplePeak(peak *uint64) func() {
	var done atomic.Bool
	finished := make(chan struct{})
	*peak = heapBytes()
	go func() {
		defer close(finished)
		for !done.Load() {
			if h := heapBytes(); h > *peak {
				*peak = h
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return func() {
		done.Store(true)
		<-finished
		if h := heapBytes(); h > *peak {
			*peak = h
		}
	}
}

func BenchmarkLookup(b *testing.B) {
	path := filepath.Join(b.TempDir(), "synthetic.mmdb")
	if _, err := geotest.WriteSynthetic(path, 200_000, 10_000, 2); err != nil {
		b.Fatal(err)
	}
	ix, err := geoindex.Build(path, nil)
	if err != nil {
		b.Fatal(err)
	}
	addrs := make([]netip.Addr, 1024)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{byte(1 + i%200), byte(i * 7), byte(i * 13), 1})
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		ix.Lookup(addrs[i&1023])
		i++
	}
}
