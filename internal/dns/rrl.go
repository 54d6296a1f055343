package dns

import (
	"net/netip"
	"sync"
	"time"
)

// Response rate limiting (in the spirit of BIND's RRL, simplified): a token
// bucket per client /24 (IPv4) or /56 (IPv6) in a fixed-size table. A
// colliding prefix takes over the slot with a full bucket, so the table
// never grows under a flood of spoofed sources and a collision can only
// make the limit more lenient, never starve a client.
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
	shards   [rrlShards]rrlShard
	now      func() int64
}

type rrlShard struct {
	mu    sync.Mutex
	slots [rrlSlotsPerShd]rrlSlot
	_     [40]byte // keep shards' locks on separate cache lines
}

type rrlSlot struct {
	key     uint64
	tokens  float64
	last    int64
	limited uint32
}

func newRRL(o RRLOptions) *rrl {
	r := &rrl{
		rate:     float64(o.ResponsesPerSecond) / 1e9,
		burst:    float64(o.ResponsesPerSecond),
		loopback: o.Loopback,
		now:      func() int64 { return time.Now().UnixNano() },
	}
	if o.Slip > 0 {
		r.slip = o.Slip
	}
	return r
}

func (r *rrl) check(client netip.Addr) int {
	client = client.Unmap()
	if client.IsLoopback() && !r.loopback {
		return rrlAnswer
	}
	var key uint64
	if client.Is4() {
		a := client.As4()
		key = 1<<63 | uint64(a[0])<<16 | uint64(a[1])<<8 | uint64(a[2])
	} else {
		a := client.As16()
		key = (uint64(a[0])<<48 | uint64(a[1])<<40 | uint64(a[2])<<32 | uint64(a[3])<<24 |
			uint64(a[4])<<16 | uint64(a[5])<<8 | uint64(a[6])) &^ (1 << 63)
	}
	h := key * 0x9E3779B97F4A7C15
	sh := &r.shards[h>>58]
	slot := &sh.slots[(h>>50)&(rrlSlotsPerShd-1)]
	now := r.now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if slot.key != key {
		*slot = rrlSlot{key: key, tokens: r.burst, last: now}
	}
	slot.tokens = min(r.burst, slot.tokens+float64(now-slot.last)*r.rate)
	slot.last = now
	if slot.tokens >= 1 {
		slot.tokens--
		return rrlAnswer
	}
	slot.limited++
	if r.slip > 0 && slot.limited%uint32(r.slip) == 0 {
		return rrlSlip
	}
	return rrlDrop
}
