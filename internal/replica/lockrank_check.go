//go:build race || lockrank

package replica

import (
	"bytes"
	"fmt"
	"runtime"
	"strconv"
	"sync"
)

// lockRankChecked reports whether this build checks lock ranks.
const lockRankChecked = true

// rankChecker tracks, per goroutine, the ranks held, and panics when one is
// taken out of order. Goroutines have no identity in Go; the checker reads
// it from runtime.Stack, which is slow, and is only built into race and
// lockrank builds.
type rankChecker struct {
	mu   sync.Mutex
	held map[uint64][]rank
}

func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		panic("replica: lock rank checker cannot read the goroutine id: " + err.Error())
	}
	return id
}

// acquire records that the calling goroutine takes a turn of rank r, and
// panics if it already holds one of rank r or above.
func (c *rankChecker) acquire(r rank) {
	g := goid()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held == nil {
		c.held = map[uint64][]rank{}
	}
	for _, h := range c.held[g] {
		if h >= r {
			panic(fmt.Sprintf("replica: lock order violated: taking a %s while holding a %s (the order is session, write gate, settle turn, namespace, document leases, leaf mutexes)", r, h))
		}
	}
	c.held[g] = append(c.held[g], r)
}

// release records that the calling goroutine gave back its turn of rank r.
func (c *rankChecker) release(r rank) {
	g := goid()
	c.mu.Lock()
	defer c.mu.Unlock()
	hs := c.held[g]
	for i := len(hs) - 1; i >= 0; i-- {
		if hs[i] == r {
			hs = append(hs[:i], hs[i+1:]...)
			break
		}
	}
	if len(hs) == 0 {
		delete(c.held, g)
	} else {
		c.held[g] = hs
	}
}

// owner returns the calling goroutine's id, for lease tables that check
// that a document's cache entry is touched by its lease holder only.
func (c *rankChecker) owner() uint64 { return goid() }
