package replica

import (
	"slices"
	"sync"
)

// leaseTable hands out turns on keys: a document's lease (its turn to be
// read, merged and written), or a namespace's (shared by document writes,
// exclusive for DDL). A turn is granted at once when the key is free, or
// queued and granted in arrival order (a waiting exclusive turn holds back
// later shared ones, as sync.RWMutex does). The table's mutex guards only
// the map of keys in use, is held for a few instructions, and never while
// a turn is waited for or a database is spoken to; a key that nobody holds
// or waits for is not in the map, so the table's size is the number of
// turns in use, whatever the number of documents.
//
// A turn is held across the database round trips of the work it protects:
// that is the point (see the package documentation).
type leaseTable struct {
	rank  rank
	check *rankChecker

	mu   sync.Mutex
	held map[string]*lease
	free []*lease // leases no key uses, for reuse
}

type lease struct {
	shared int    // holders of shared turns
	excl   bool   // held exclusively
	owner  uint64 // the exclusive holder's goroutine (checked builds only)
	queue  []waiter
}

type waiter struct {
	excl  bool
	owner uint64
	ready chan struct{} // closed when the turn is granted
}

// maxFreeLeases bounds the leases kept for reuse.
const maxFreeLeases = 256

func newLeaseTable(r rank, check *rankChecker) *leaseTable {
	return &leaseTable{rank: r, check: check, held: map[string]*lease{}}
}

// turns is a set of turns taken by acquire; release gives them back.
type turns struct {
	t    *leaseTable
	excl bool
	keys []string
}

// acquire takes a turn on every key, exclusive or shared, each once and in
// ascending key order (the one global order, so that two multi-document
// writes never wait for each other in a cycle). A goroutine holds at most
// one set of turns of a table at a time (the rank checker enforces it in
// checked builds).
func (t *leaseTable) acquire(excl bool, keys ...string) turns {
	t.check.acquire(t.rank)
	if len(keys) > 1 {
		keys = slices.Clone(keys)
		slices.Sort(keys)
		keys = slices.Compact(keys)
	}
	for _, k := range keys {
		t.take(k, excl)
	}
	return turns{t: t, excl: excl, keys: keys}
}

// release gives the turns back, in reverse order.
func (ts turns) release() {
	for i := len(ts.keys) - 1; i >= 0; i-- {
		ts.t.give(ts.keys[i], ts.excl)
	}
	ts.t.check.release(ts.t.rank)
}

func (t *leaseTable) take(k string, excl bool) {
	t.mu.Lock()
	l := t.held[k]
	if l == nil {
		if n := len(t.free); n > 0 {
			l, t.free = t.free[n-1], t.free[:n-1]
		} else {
			l = &lease{}
		}
		t.held[k] = l
	}
	if len(l.queue) == 0 && !l.excl && (!excl || l.shared == 0) {
		if excl {
			l.excl, l.owner = true, t.check.owner()
		} else {
			l.shared++
		}
		t.mu.Unlock()
		return
	}
	w := waiter{excl: excl, owner: t.check.owner(), ready: make(chan struct{})}
	l.queue = append(l.queue, w)
	t.mu.Unlock()
	<-w.ready
}

func (t *leaseTable) give(k string, excl bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.held[k]
	if excl {
		l.excl, l.owner = false, 0
	} else {
		l.shared--
	}
	for len(l.queue) > 0 {
		w := l.queue[0]
		if w.excl {
			if l.shared > 0 || l.excl {
				break
			}
			l.excl, l.owner = true, w.owner
			l.queue = l.queue[1:]
			close(w.ready)
			break
		}
		if l.excl {
			break
		}
		l.shared++
		l.queue = l.queue[1:]
		close(w.ready)
	}
	if !l.excl && l.shared == 0 && len(l.queue) == 0 {
		delete(t.held, k)
		if len(t.free) < maxFreeLeases {
			l.queue = l.queue[:0]
			t.free = append(t.free, l)
		}
	}
}

// heldByCaller reports whether the calling goroutine holds k exclusively.
// Only checked builds know goroutines; elsewhere it reports whether anyone
// holds k exclusively.
func (t *leaseTable) heldByCaller(k string) bool {
	me := t.check.owner()
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.held[k]
	return l != nil && l.excl && l.owner == me
}
