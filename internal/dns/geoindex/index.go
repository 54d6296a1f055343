// Package geoindex turns a MaxMind database (GeoLite2/GeoIP2 City or Country
// layout) into a compact in-memory index so that a DNS query never decodes the
// mmdb: a lookup is one binary search over a sorted array of network starts.
//
// The index keeps only what DNS ranking needs: coordinates, country and
// continent. Records are deduplicated into a location table, so the caller can
// cache per-location work (node rankings) in a dense slice indexed by location
// id. All arrays are pointer-free, which keeps the garbage collector from
// scanning millions of entries.
//
// An Index is immutable once built and safe for concurrent use.
package geoindex

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/oschwald/maxminddb-golang/v2"
)

// Location is where a network is. Country and Continent are ISO 3166-1 alpha-2
// and MaxMind continent codes (upper case), zero when unknown.
type Location struct {
	Lat, Lon  float32
	HasCoords bool // false: the source gave no coordinates and no known country/continent
	Country   [2]byte
	Continent [2]byte
}

// Override places a network ahead of the database.
type Override struct {
	Prefix   netip.Prefix
	Location Location
}

// Stats describes one build.
type Stats struct {
	Networks4, Networks6 int // networks kept from the database
	Records              int // distinct database records decoded
	Locations            int // distinct locations (database and overrides)
	Overrides            int
	Duration             time.Duration
	DatabaseType         string
}

// locBits is how many bits of a packed entry hold the location id; the rest
// holds the prefix length.
const (
	locBits = 24
	locMask = 1<<locBits - 1
	// MaxLocations bounds the location table so an id fits in a packed entry.
	MaxLocations = locMask
)

// Index maps addresses to location ids.
type Index struct {
	// v4 entries: start<<32 | prefixLen<<24 | loc. Sorted, non-overlapping.
	v4 []uint64
	// v6 entries in three parallel arrays, sorted by (hi, lo).
	v6hi, v6lo []uint64
	v6meta     []uint32 // prefixLen<<24 | loc

	// overrides by prefix length, longest first; checked before the database.
	ovr []ovrLevel

	locs  []Location
	stats Stats
}

type ovrLevel struct {
	bits int
	v4   bool
	m    map[netip.Addr]uint32 // masked address -> loc
}

// Empty returns an index with no database and no overrides: every lookup misses.
func Empty() *Index { return &Index{} }

// NumLocations is the size of the location table; ids are 0..NumLocations()-1.
func (ix *Index) NumLocations() int { return len(ix.locs) }

// NumNetworks is how many database networks the index holds.
func (ix *Index) NumNetworks() int { return len(ix.v4) + len(ix.v6hi) }

// Location returns the location with id.
func (ix *Index) Location(id uint32) Location { return ix.locs[id] }

// Stats returns how the index was built.
func (ix *Index) Stats() Stats { return ix.stats }

// Lookup finds the location of addr: overrides first, then the database. bits
// is the prefix length of the network that matched (in addr's family, after
// unmapping IPv4-mapped IPv6), which is what an ECS reply's scope should say.
func (ix *Index) Lookup(addr netip.Addr) (loc uint32, bits int, ok bool) {
	addr = addr.Unmap()
	if len(ix.ovr) > 0 {
		if loc, bits, ok = ix.lookupOverride(addr); ok {
			return loc, bits, true
		}
	}
	if addr.Is4() {
		return ix.lookup4(addr)
	}
	if addr.Is6() {
		return ix.lookup6(addr)
	}
	return 0, 0, false
}

func (ix *Index) lookupOverride(addr netip.Addr) (uint32, int, bool) {
	is4 := addr.Is4()
	for i := range ix.ovr {
		l := &ix.ovr[i]
		if l.v4 != is4 {
			continue
		}
		p, err := addr.Prefix(l.bits)
		if err != nil {
			continue
		}
		if loc, ok := l.m[p.Addr()]; ok {
			return loc, l.bits, true
		}
	}
	return 0, 0, false
}

func (ix *Index) lookup4(addr netip.Addr) (uint32, int, bool) {
	a4 := addr.As4()
	ip := uint64(a4[0])<<24 | uint64(a4[1])<<16 | uint64(a4[2])<<8 | uint64(a4[3])
	key := ip<<32 | 0xFFFFFFFF
	// Find the last entry whose start is <= ip: a hand-written search keeps
	// the hot path free of closures.
	lo, hi := 0, len(ix.v4)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if ix.v4[m] <= key {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return 0, 0, false
	}
	e := ix.v4[lo-1]
	start := e >> 32
	bits := int(e>>locBits) & 0xFF
	size := uint64(1) << (32 - bits)
	if ip-start >= size {
		return 0, 0, false
	}
	return uint32(e & locMask), bits, true
}

func (ix *Index) lookup6(addr netip.Addr) (uint32, int, bool) {
	a := addr.As16()
	hi := be64(a[:8])
	lo := be64(a[8:])
	l, h := 0, len(ix.v6hi)
	for l < h {
		m := int(uint(l+h) >> 1)
		if ix.v6hi[m] < hi || (ix.v6hi[m] == hi && ix.v6lo[m] <= lo) {
			l = m + 1
		} else {
			h = m
		}
	}
	if l == 0 {
		return 0, 0, false
	}
	i := l - 1
	meta := ix.v6meta[i]
	bits := int(meta >> locBits)
	if !in6(ix.v6hi[i], ix.v6lo[i], bits, hi, lo) {
		return 0, 0, false
	}
	return meta & locMask, bits, true
}

// in6 reports whether (hi, lo) lies in the network starting at (shi, slo) with
// the given prefix length.
func in6(shi, slo uint64, bits int, hi, lo uint64) bool {
	switch {
	case bits == 0:
		return true
	case bits <= 64:
		mask := ^uint64(0) << (64 - bits)
		return hi&mask == shi
	default:
		if hi != shi {
			return false
		}
		mask := ^uint64(0) << (128 - bits)
		return lo&mask == slo
	}
}

func be64(b []byte) uint64 {
	_ = b[7]
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

// record is the part of a City or Country record the index keeps. Pointers
// tell a missing coordinate from 0°.
type record struct {
	Location struct {
		Latitude  *float64 `maxminddb:"latitude"`
		Longitude *float64 `maxminddb:"longitude"`
	} `maxminddb:"location"`
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	RegisteredCountry struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"registered_country"`
	Continent struct {
		Code string `maxminddb:"code"`
	} `maxminddb:"continent"`
}

// Build reads the database at path (empty path: no database) and adds the
// overrides. The file is read into memory rather than memory-mapped so that a
// file rewritten in place while we read it yields a decode error, not SIGBUS.
// The file's bytes are released when Build returns.
func Build(path string, overrides []Override) (*Index, error) {
	start := time.Now()
	b := builder{locIDs: make(map[Location]uint32)}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("geoindex: read %s: %w", path, err)
		}
		if err := b.addDatabase(data); err != nil {
			return nil, fmt.Errorf("geoindex: %s: %w", path, err)
		}
	}
	if err := b.addOverrides(overrides); err != nil {
		return nil, err
	}
	ix := b.finish()
	ix.stats.Duration = time.Since(start)
	return ix, nil
}

// BuildBytes is Build for a database already in memory. data is not retained.
func BuildBytes(data []byte, overrides []Override) (*Index, error) {
	start := time.Now()
	b := builder{locIDs: make(map[Location]uint32)}
	if err := b.addDatabase(data); err != nil {
		return nil, fmt.Errorf("geoindex: %w", err)
	}
	if err := b.addOverrides(overrides); err != nil {
		return nil, err
	}
	ix := b.finish()
	ix.stats.Duration = time.Since(start)
	return ix, nil
}

type builder struct {
	ix     Index
	locIDs map[Location]uint32
}

func (b *builder) locID(l Location) (uint32, error) {
	if id, ok := b.locIDs[l]; ok {
		return id, nil
	}
	if len(b.ix.locs) >= MaxLocations {
		return 0, fmt.Errorf("geoindex: more than %d distinct locations", MaxLocations)
	}
	id := uint32(len(b.ix.locs))
	b.ix.locs = append(b.ix.locs, l)
	b.locIDs[l] = id
	return id, nil
}

func (b *builder) addDatabase(data []byte) error {
	r, err := maxminddb.OpenBytes(data, maxminddb.DisableStringCache())
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer r.Close()
	b.ix.stats.DatabaseType = r.Metadata.DatabaseType

	// Many networks share one record; decode each record once. The map is
	// keyed by the record's offset in the data section.
	byOffset := make(map[uintptr]uint32, 1<<16)
	// Pre-size from the node count: a tree with n nodes has at most n+1
	// networks, and usually about half that carry data.
	hint := int(min(r.Metadata.NodeCount/2, 8<<20))
	b.ix.v4 = make([]uint64, 0, hint/2)
	b.ix.v6hi = make([]uint64, 0, hint/4)
	b.ix.v6lo = make([]uint64, 0, hint/4)
	b.ix.v6meta = make([]uint32, 0, hint/4)

	var rec record
	for res := range r.Networks() {
		if err := res.Err(); err != nil {
			return fmt.Errorf("networks: %w", err)
		}
		off := res.Offset()
		loc, ok := byOffset[off]
		if !ok {
			rec = record{}
			if err := res.Decode(&rec); err != nil {
				return fmt.Errorf("decode record at %d: %w", off, err)
			}
			l, known := rec.location()
			if !known {
				// A record with nothing we can place (e.g. only an
				// anonymous-proxy flag) is left out of the index.
				loc = math.MaxUint32
			} else if loc, err = b.locID(l); err != nil {
				return err
			}
			byOffset[off] = loc
			b.ix.stats.Records++
		}
		if loc == math.MaxUint32 {
			continue
		}
		p := res.Prefix()
		if err := b.addNetwork(p, loc); err != nil {
			return err
		}
	}
	return nil
}

func (b *builder) addNetwork(p netip.Prefix, loc uint32) error {
	a := p.Addr()
	bits := uint64(p.Bits())
	if a.Is4() {
		a4 := a.As4()
		start := uint64(a4[0])<<24 | uint64(a4[1])<<16 | uint64(a4[2])<<8 | uint64(a4[3])
		b.ix.v4 = append(b.ix.v4, start<<32|bits<<locBits|uint64(loc))
		return nil
	}
	a16 := a.As16()
	b.ix.v6hi = append(b.ix.v6hi, be64(a16[:8]))
	b.ix.v6lo = append(b.ix.v6lo, be64(a16[8:]))
	b.ix.v6meta = append(b.ix.v6meta, uint32(bits)<<locBits|loc)
	return nil
}

func (rec *record) location() (Location, bool) {
	var l Location
	cc := rec.Country.ISOCode
	if cc == "" {
		cc = rec.RegisteredCountry.ISOCode
	}
	if len(cc) == 2 {
		l.Country = [2]byte{upper(cc[0]), upper(cc[1])}
	}
	if len(rec.Continent.Code) == 2 {
		l.Continent = [2]byte{upper(rec.Continent.Code[0]), upper(rec.Continent.Code[1])}
	}
	if la, lo := rec.Location.Latitude, rec.Location.Longitude; la != nil && lo != nil &&
		*la >= -90 && *la <= 90 && *lo >= -180 && *lo <= 180 {
		l.Lat, l.Lon, l.HasCoords = float32(*la), float32(*lo), true
		return l, true
	}
	// Country layout, or a City record without coordinates: place it at the
	// country's (or continent's) centre so distance ranking still works.
	if c, ok := Centroid(l.Country, l.Continent); ok {
		l.Lat, l.Lon, l.HasCoords = c[0], c[1], true
	}
	return l, l.HasCoords || l.Country != [2]byte{} || l.Continent != [2]byte{}
}

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

func (b *builder) addOverrides(ovs []Override) error {
	levels := map[[2]int]*ovrLevel{} // (bits, v4) -> level
	for _, o := range ovs {
		if !o.Prefix.IsValid() {
			return errors.New("geoindex: override with an invalid prefix")
		}
		p := o.Prefix.Masked()
		if p.Addr().Is4In6() {
			// ::ffff:a.b.c.d/n as an IPv4 prefix, as lookups unmap addresses.
			if p.Bits() < 96 {
				return fmt.Errorf("geoindex: override %s: IPv4-mapped prefix shorter than /96", o.Prefix)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		l := o.Location
		if !l.HasCoords {
			if c, ok := Centroid(l.Country, l.Continent); ok {
				l.Lat, l.Lon, l.HasCoords = c[0], c[1], true
			}
		}
		id, err := b.locID(l)
		if err != nil {
			return err
		}
		v4 := 0
		if p.Addr().Is4() {
			v4 = 1
		}
		k := [2]int{p.Bits(), v4}
		lv := levels[k]
		if lv == nil {
			lv = &ovrLevel{bits: p.Bits(), v4: v4 == 1, m: map[netip.Addr]uint32{}}
			levels[k] = lv
		}
		// A later override for the same prefix wins, like a later line in a file.
		lv.m[p.Addr()] = id
		b.ix.stats.Overrides++
	}
	for _, lv := range levels {
		b.ix.ovr = append(b.ix.ovr, *lv)
	}
	slices.SortFunc(b.ix.ovr, func(a, c ovrLevel) int { return c.bits - a.bits })
	return nil
}

func (b *builder) finish() *Index {
	ix := &b.ix
	// Networks() walks the tree depth-first from the zero branch, so entries
	// arrive sorted; sort anyway (cheap when sorted) so correctness does not
	// depend on the library's traversal order.
	if !slices.IsSorted(ix.v4) {
		slices.Sort(ix.v4)
	}
	if !v6Sorted(ix) {
		sortV6(ix)
	}
	// Give back what append over-allocated: the index lives until the next
	// reload, so a short copy now is cheaper than carrying slack.
	ix.v4 = trim(ix.v4)
	ix.v6hi, ix.v6lo, ix.v6meta = trim(ix.v6hi), trim(ix.v6lo), trim(ix.v6meta)
	ix.locs = trim(ix.locs)
	ix.stats.Networks4 = len(ix.v4)
	ix.stats.Networks6 = len(ix.v6hi)
	ix.stats.Locations = len(ix.locs)
	return ix
}

func trim[T any](s []T) []T {
	if cap(s)-len(s) > len(s)/8 {
		return slices.Clone(s)
	}
	return s
}

func v6Sorted(ix *Index) bool {
	for i := 1; i < len(ix.v6hi); i++ {
		if ix.v6hi[i] < ix.v6hi[i-1] || (ix.v6hi[i] == ix.v6hi[i-1] && ix.v6lo[i] < ix.v6lo[i-1]) {
			return false
		}
	}
	return true
}

func sortV6(ix *Index) {
	idx := make([]int, len(ix.v6hi))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		switch {
		case ix.v6hi[a] < ix.v6hi[b]:
			return -1
		case ix.v6hi[a] > ix.v6hi[b]:
			return 1
		case ix.v6lo[a] < ix.v6lo[b]:
			return -1
		case ix.v6lo[a] > ix.v6lo[b]:
			return 1
		}
		return 0
	})
	hi := make([]uint64, len(idx))
	lo := make([]uint64, len(idx))
	meta := make([]uint32, len(idx))
	for i, j := range idx {
		hi[i], lo[i], meta[i] = ix.v6hi[j], ix.v6lo[j], ix.v6meta[j]
	}
	ix.v6hi, ix.v6lo, ix.v6meta = hi, lo, meta
}
