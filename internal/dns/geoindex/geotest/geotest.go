// Package geotest writes MaxMind databases for tests and benchmarks with
// github.com/maxmind/mmdbwriter: small hand-placed ones in documentation
// ranges, and a generated one the size of GeoLite2-City. It is imported only
// by tests.
package geotest

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Place is a point with the codes a City record carries.
type Place struct {
	Name      string
	Lat, Lon  float64
	Country   string
	Continent string
	GeonameID uint32
}

// Places used by the tests: five node sites and clients on every continent.
var (
	Frankfurt   = Place{"Frankfurt", 50.11, 8.68, "DE", "EU", 2925533}
	Oregon      = Place{"Boardman", 45.84, -119.70, "US", "NA", 5713376}
	Virginia    = Place{"Ashburn", 39.04, -77.49, "US", "NA", 4744870}
	SaoPaulo    = Place{"São Paulo", -23.55, -46.63, "BR", "SA", 3448439}
	Singapore   = Place{"Singapore", 1.35, 103.82, "SG", "AS", 1880252}
	Paris       = Place{"Paris", 48.86, 2.35, "FR", "EU", 2988507}
	Seattle     = Place{"Seattle", 47.61, -122.33, "US", "NA", 5809844}
	NewYork     = Place{"New York", 40.71, -74.01, "US", "NA", 5128581}
	BuenosAires = Place{"Buenos Aires", -34.60, -58.38, "AR", "SA", 3435910}
	Tokyo       = Place{"Tokyo", 35.68, 139.69, "JP", "AS", 1850147}
	Sydney      = Place{"Sydney", -33.87, 151.21, "AU", "OC", 2147714}
)

// Network places a prefix. CountryOnly writes a Country-layout record (no
// location) for it.
type Network struct {
	Prefix      netip.Prefix
	Place       Place
	CountryOnly bool
}

// Record returns the City-layout record for a place.
func Record(p Place, countryOnly bool) mmdbtype.Map {
	names := func(s string) mmdbtype.Map {
		return mmdbtype.Map{"en": mmdbtype.String(s), "de": mmdbtype.String(s), "fr": mmdbtype.String(s)}
	}
	m := mmdbtype.Map{
		"continent": mmdbtype.Map{
			"code":  mmdbtype.String(p.Continent),
			"names": names(p.Continent),
		},
		"country": mmdbtype.Map{
			"iso_code": mmdbtype.String(p.Country),
			"names":    names(p.Country),
		},
		"registered_country": mmdbtype.Map{
			"iso_code": mmdbtype.String(p.Country),
		},
	}
	if !countryOnly {
		m["city"] = mmdbtype.Map{
			"geoname_id": mmdbtype.Uint32(p.GeonameID),
			"names":      names(p.Name),
		}
		m["location"] = mmdbtype.Map{
			"accuracy_radius": mmdbtype.Uint16(20),
			"latitude":        mmdbtype.Float64(p.Lat),
			"longitude":       mmdbtype.Float64(p.Lon),
			"time_zone":       mmdbtype.String("Etc/UTC"),
		}
		m["postal"] = mmdbtype.Map{"code": mmdbtype.String("12345")}
	}
	return m
}

// Write writes a City-layout database holding nets to path (via a temporary
// file and a rename, the way a database updater replaces it).
func Write(path string, nets []Network) error {
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            "GeoLite2-City",
		IncludeReservedNetworks: true,
		RecordSize:              28,
	})
	if err != nil {
		return err
	}
	for _, n := range nets {
		if err := tree.Insert(ipnet(n.Prefix), Record(n.Place, n.CountryOnly)); err != nil {
			return fmt.Errorf("insert %s: %w", n.Prefix, err)
		}
	}
	return writeTree(tree, path)
}

func writeTree(tree *mmdbwriter.Tree, path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".mmdb-*")
	if err != nil {
		return err
	}
	if _, err := tree.WriteTo(tmp); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func ipnet(p netip.Prefix) *net.IPNet {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		return &net.IPNet{IP: net.IP(b[:]), Mask: net.CIDRMask(p.Bits(), 32)}
	}
	b := a.As16()
	return &net.IPNet{IP: net.IP(b[:]), Mask: net.CIDRMask(p.Bits(), 128)}
}

// geonameKey dedups records by their geoname id instead of hashing each
// serialized record: the generator inserts millions of networks.
type geonameKey struct{ buf [8]byte }

func (k *geonameKey) Key(v mmdbtype.DataType) ([]byte, error) {
	m, ok := v.(mmdbtype.Map)
	if !ok {
		return nil, fmt.Errorf("unexpected record type %T", v)
	}
	city, ok := m["city"].(mmdbtype.Map)
	if !ok {
		return nil, fmt.Errorf("record without city")
	}
	binary.BigEndian.PutUint64(k.buf[:], uint64(city["geoname_id"].(mmdbtype.Uint32)))
	return k.buf[:], nil
}

// SyntheticStats says what WriteSynthetic wrote.
type SyntheticStats struct {
	Networks4, Networks6, Places int
}

// WriteSynthetic writes a City-layout database with about networks networks
// (three quarters IPv4, the rest IPv6) spread over places distinct
// locations, like GeoLite2-City (3–4 million networks, ~150k cities). It is
// deterministic for a seed.
func WriteSynthetic(path string, networks, places int, seed uint64) (SyntheticStats, error) {
	var st SyntheticStats
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType:            "GeoLite2-City",
		IncludeReservedNetworks: true,
		RecordSize:              28,
		KeyGenerator:            &geonameKey{},
	})
	if err != nil {
		return st, err
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	recs := make([]mmdbtype.Map, places)
	for i := range recs {
		cc := fmt.Sprintf("%c%c", 'A'+rng.IntN(26), 'A'+rng.IntN(26))
		recs[i] = Record(Place{
			Name:      fmt.Sprintf("city%d", i),
			Lat:       rng.Float64()*140 - 60,
			Lon:       rng.Float64()*360 - 180,
			Country:   cc,
			Continent: []string{"AF", "AS", "EU", "NA", "OC", "SA"}[rng.IntN(6)],
			GeonameID: uint32(i + 1),
		}, false)
	}
	st.Places = places

	n4 := networks * 3 / 4
	n6 := networks - n4
	// IPv4: walk the space from 1.0.0.0 with aligned blocks of /20../28
	// (average ~/24 with gaps), so n4 networks fit in the address space.
	cur := uint64(1 << 24)
	for i := 0; i < n4 && cur < 1<<32; i++ {
		bits := 20 + rng.IntN(9)
		size := uint64(1) << (32 - bits)
		cur = (cur + size - 1) &^ (size - 1)
		if cur+size > 1<<32 {
			break
		}
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], uint32(cur))
		p := netip.PrefixFrom(netip.AddrFrom4(a), bits)
		// Neighbours get different records so the writer does not merge them.
		if err := tree.Insert(ipnet(p), recs[(i*7919+rng.IntN(places))%places]); err != nil {
			return st, fmt.Errorf("insert %s: %w", p, err)
		}
		st.Networks4++
		cur += size
		if rng.IntN(4) == 0 { // leave a gap now and then
			cur += size
		}
	}
	// IPv6: /32../48 blocks inside 2400::/6.
	hi := uint64(0x2400) << 48
	for i := 0; i < n6; i++ {
		bits := 32 + rng.IntN(17)
		size := uint64(1) << (64 - bits)
		hi = (hi + size - 1) &^ (size - 1)
		var a [16]byte
		binary.BigEndian.PutUint64(a[:8], hi)
		p := netip.PrefixFrom(netip.AddrFrom16(a), bits)
		if err := tree.Insert(ipnet(p), recs[(i*104729+rng.IntN(places))%places]); err != nil {
			return st, fmt.Errorf("insert %s: %w", p, err)
		}
		st.Networks6++
		hi += size
		if rng.IntN(4) == 0 {
			hi += size
		}
	}
	return st, writeTree(tree, path)
}
