package dns

import (
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// unkeyedSlot is where the rate limiter of db2da27 put a client /24: an
// unkeyed multiplicative hash anyone can compute. An attacker uses it to
// find a prefix that shares the victim's slot.
func unkeyedSlot(a netip.Addr) (shard, slot uint64) {
	b := a.As4()
	key := 1<<63 | uint64(b[0])<<16 | uint64(b[1])<<8 | uint64(b[2])
	h := key * 0x9E3779B97F4A7C15
	return h >> 58, (h >> 50) & 255
}

// unkeyedCollider returns a 127.x.y.1 address whose /24 shares victim's
// slot under the unkeyed hash.
func unkeyedCollider(t *testing.T, victim netip.Addr) netip.Addr {
	t.Helper()
	vs, vi := unkeyedSlot(victim)
	for x := range 256 {
		for y := range 256 {
			a := netip.AddrFrom4([4]byte{127, byte(x), byte(y), 1})
			if s, i := unkeyedSlot(a); s == vs && i == vi && !netip.PrefixFrom(victim, 24).Masked().Contains(a) {
				return a
			}
		}
	}
	t.Fatal("no colliding prefix in 127/8")
	return netip.Addr{}
}

// keyedCollider returns a 127.x.y.1 address whose /24 shares a bucket with
// victim's in r, found through the limiter's secret seed.
func keyedCollider(t *testing.T, r *rrl, victim netip.Addr) netip.Addr {
	t.Helper()
	for x := range 256 {
		for y := range 256 {
			a := netip.AddrFrom4([4]byte{127, byte(x), byte(y), 1})
			if sharesBucket(r, victim, a) && !netip.PrefixFrom(victim, 24).Masked().Contains(a) {
				return a
			}
		}
	}
	t.Fatal("no prefix in 127/8 shares a bucket with the victim")
	return netip.Addr{}
}

// TestRRLVictimLimitedWhateverTheInterleaving plays a reflection attacker:
// it spoofs the victim's address (here it really sends from it, on
// loopback) and, between two of the victim's queries, sends one from
// another prefix: one that collided with the victim's slot under the
// unkeyed hash of db2da27, one of many different prefixes, or one that
// shares a bucket with the victim's under the limiter's secret seed. However the queries interleave, the victim's prefix
// must get no more full answers than its bucket allows.
func TestRRLVictimLimitedWhateverTheInterleaving(t *testing.T) {
	const rate = 1 // per second, also the burst
	ts := startServer(t, "", fiveNodes(), func(o *Options) {
		// Slip 1: every limited response is truncated, so every query gets
		// a reply and the test never waits for one that is not coming.
		o.RRL = RRLOptions{Enabled: true, ResponsesPerSecond: rate, Slip: 1, Loopback: true}
	})
	many := make([]netip.Addr, 0, 64)
	for i := range cap(many) {
		many = append(many, netip.AddrFrom4([4]byte{127, 9, byte(i), 1}))
	}
	// Each case has its own victim prefix, so no bucket carries over.
	for _, c := range []struct {
		name   string
		victim netip.Addr
		others []netip.Addr
	}{
		{"unkeyed-collision", ip("127.0.1.1"), []netip.Addr{unkeyedCollider(t, ip("127.0.1.1"))}},
		{"many-prefixes", ip("127.0.3.1"), many},
		{"keyed-collision", ip("127.0.5.1"), []netip.Addr{keyedCollider(t, ts.rrl.Load(), ip("127.0.5.1"))}},
	} {
		victim := c.victim
		t.Run(c.name, func(t *testing.T) {
			const n = 30
			start := time.Now()
			full, truncated := 0, 0
			for i := range n {
				r := ts.query(t, "static.edgenode.test.", mdns.TypeA, qopt{from: victim.String()})
				switch {
				case r.Truncated && len(r.Answer) == 0:
					truncated++
				case len(r.Answer) == 2:
					full++
				default:
					t.Fatalf("unexpected reply: %v", r)
				}
				other := c.others[i%len(c.others)]
				ts.query(t, "static.edgenode.test.", mdns.TypeA, qopt{from: other.String()})
			}
			// The bucket holds `rate` tokens and refills at `rate` per
			// second: that, plus one for a refill landing between the
			// clock reads, is all the victim's prefix may be answered.
			elapsed := time.Since(start)
			allowed := rate + int(elapsed.Seconds()*rate) + 1
			t.Logf("victim: %d full answers, %d truncated in %v (allowed %d)", full, truncated, elapsed.Round(time.Millisecond), allowed)
			if full > allowed {
				t.Errorf("victim prefix got %d full answers of %d in %v; the limit allows %d", full, n, elapsed, allowed)
			}
			if full+truncated != n {
				t.Errorf("%d replies to %d queries", full+truncated, n)
			}
		})
	}
}
