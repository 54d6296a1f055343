package dns

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

// Response rate limiting (in the spirit of BIND's RRL): token buckets per
// client /24 (IPv4) or /56 (IPv6) in a fixed-size table, so a flood of
// spoofed sources never grows memory.
//
// The table is a count-min sketch of token buckets. A prefix maps to two
// buckets of one shard through a hash keyed with a random seed per limiter,
// so nobody outside the process can tell which prefixes share a bucket. A
// response is sent only if both of the prefix's buckets hold a token, and it
// takes one from each. Buckets have no owner and are never reset: another
// prefix landing on a bucket can only empty it further, so a prefix is never
// answered faster than its own rate, however other queries interleave with
// it. (A table that stores the prefix in the slot must evict or reset it on
// a collision, and an attacker spraying spoofed prefixes, which costs him
// nothing, then hands the victim a fresh bucket: the reflection attack this
// limiter exists to stop.) The price is the other way round: an innocent
// prefix whose two buckets are both shared with busy ones is limited too.
// With two choices among rrlSlotsPerShd buckets per shard that takes a flood
// across much of the table, and slip still sends such a client a truncated
// answer now and then, so a real resolver retries over TCP, which response
// rate limiting leaves alone.
const (
	rrlShards      = 64
	rrlSlotsPerShd = 256
)

const (
	rrlAnswer = iota
	rrlDrop
	rrlSlip
)

type rrl struct {
	rate     float64 // tokens per nanosecond
	burst    float64
	slip     int // 0: drop all limited; n: every n-th limited response is truncated
	loopback bool
	seed     maphash.Seed
	shards   [rrlShards]rrlShard
	now      func() int64 // ns, monotonic
}

type rrlShard struct {
	mu    sync.Mutex
	slots [rrlSlotsPerShd]rrlSlot
	_     [56]byte // keep shards' locks on separate cache lines
}

type rrlSlot struct {
	tokens  float64
	last    int64 // ns on the limiter's clock
	limited uint32
}

func newRRL(o RRLOptions) *rrl {
	r := &rrl{
		rate:     float64(o.ResponsesPerSecond) / 1e9,
		burst:    float64(o.ResponsesPerSecond),
		loopback: o.Loopback,
		seed:     maphash.MakeSeed(),
	}
	start := time.Now()
	r.now = func() int64 { return int64(time.Since(start)) }
	if o.Slip > 0 {
		r.slip = o.Slip
	}
	for i := range r.shards {
		for j := range r.shards[i].slots {
			r.shards[i].slots[j].tokens = r.burst
		}
	}
	return r
}

// buckets returns the shard and the two distinct bucket indexes of the
// client's prefix.
func (r *rrl) buckets(client netip.Addr) (shard, i, j int) {
	var b [8]byte
	if client.Is4() {
		a := client.As4()
		copy(b[1:], a[:3])
		b[0] = 4 // IPv4 and IPv6 prefixes never hash alike
	} else {
		a := client.As16()
		copy(b[1:], a[:7])
		b[0] = 6
	}
	h := maphash.Bytes(r.seed, b[:])
	shard = int(h >> 58)
	i = int(h>>50) & (rrlSlotsPerShd - 1)
	j = int(h>>42) & (rrlSlotsPerShd - 1)
	if j == i {
		j = (i + 1) & (rrlSlotsPerShd - 1)
	}
	return shard, i, j
}

func (r *rrl) check(client netip.Addr) int {
	client = client.Unmap()
	if client.IsLoopback() && !r.loopback {
		return rrlAnswer
	}
	shard, i, j := r.buckets(client)
	sh := &r.shards[shard]
	now := r.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	a, b := &sh.slots[i], &sh.slots[j]
	a.refill(now, r)
	b.refill(now, r)
	if a.tokens >= 1 && b.tokens >= 1 {
		a.tokens--
		b.tokens--
		return rrlAnswer
	}
	a.limited++
	if r.slip > 0 && a.limited%uint32(r.slip) == 0 {
		return rrlSlip
	}
	return rrlDrop
}

func (s *rrlSlot) refill(now int64, r *rrl) {
	if d := now - s.last; d > 0 {
		s.tokens = min(r.burst, s.tokens+float64(d)*r.rate)
		s.last = now
	}
}
