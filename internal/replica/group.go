package replica

import (
	"context"
	"sync"
)

// Group commit per document. Writers of one hot document (many clients
// $inc a comment thread's counter) queue on its lease anyway; instead of
// each paying its own read, log append (an fsync) and database write in
// turn, the writes waiting for a document are stored together: one
// writer, the leader, takes the document's lease, then every write queued
// for the document (up to maxGroupOps, and maxGroupBytes of ops), and
// runs them as one chunk: staged in arrival order against one read of the
// document, logged in one append, stored with one database write. Each
// write still is its own op (its own clock, its own op log entry, its own
// retryable-write record); only the round trips and the fsync are shared.
// Each writer gets its own outcome: a write whose op the merge refuses
// (Compute's error, a size limit) fails alone while stage goes on with
// the next; a document the database refuses (a unique index) is undone
// as a whole, and each of its writes is then run again alone, so that
// only the ones the database refuses by themselves fail.
//
// Only writes of one document named by its _id (an Item without Filter,
// alone in its Write) queue here: updateOne, findAndModify, insertOne or
// deleteOne by _id, the hot path. Multi-document writes and filtered
// items take the leases directly (chunk.run), as do peers' applies; the
// document lease still orders all of them.
//
// One document's queue is a small state machine, under groupTable.mu:
//
//	idle    not in the map: nobody writes the document through the queue
//	led     in the map: a leader runs; writers that arrive are appended
//	        to waiting and block on their wake channel
//
// A leader, once it holds the lease, takes the waiting writes (its own
// first: it is always waiting[0]), runs them, gives the lease back, and
// then either finds waiting empty (led -> idle) or hands the lead to
// waiting[0] (led -> led), which takes the lease and every write that
// arrived meanwhile. A writer is queued, then either handed its outcome
// (taken by a leader) or the lead (then it is the leader until its group
// is done). The leader's own write is always in its group, so it leads
// once and returns; nobody leads for ever, and nothing but the lease
// (rank 4, which exists anyway) is held across database I/O: the queue's
// mutex is a leaf held for a few instructions.
const (
	maxGroupOps   = chunkSize
	maxGroupBytes = 4 << 20
)

type groupTable struct {
	check *rankChecker

	mu sync.Mutex
	m  map[string]*docQueue // led documents
}

type docQueue struct {
	waiting []*groupWrite // arrived, not yet taken by a leader, in arrival order
}

// groupWrite is one writer's write in a document's queue.
type groupWrite struct {
	item Item
	out  Outcome // set by the leader that ran it, before wake
	// wake receives once (buffered, the sender never blocks): false when
	// out is final, true when the writer is to lead.
	wake chan bool
}

// join queues w for key and reports whether w leads (the document was
// idle).
func (t *groupTable) join(key string, w *groupWrite) (lead bool) {
	t.check.acquire(rankLeaf)
	defer t.check.release(rankLeaf)
	t.mu.Lock()
	defer t.mu.Unlock()
	q, led := t.m[key]
	if !led {
		if t.m == nil {
			t.m = map[string]*docQueue{}
		}
		q = &docQueue{}
		t.m[key] = q
	}
	q.waiting = append(q.waiting, w)
	return !led
}

// take removes up to n writes from the front of key's queue.
func (t *groupTable) take(key string, n int) []*groupWrite {
	t.check.acquire(rankLeaf)
	defer t.check.release(rankLeaf)
	t.mu.Lock()
	defer t.mu.Unlock()
	q := t.m[key]
	n = min(n, len(q.waiting))
	g := q.waiting[:n:n]
	q.waiting = q.waiting[n:]
	return g
}

// putBack returns writes a leader took but did not run (over the byte
// bound) to the front of key's queue, in their order.
func (t *groupTable) putBack(key string, ws []*groupWrite) {
	if len(ws) == 0 {
		return
	}
	t.check.acquire(rankLeaf)
	defer t.check.release(rankLeaf)
	t.mu.Lock()
	defer t.mu.Unlock()
	q := t.m[key]
	q.waiting = append(ws[:len(ws):len(ws)], q.waiting...)
}

// done ends a leader's turn: it returns the next leader (nil: the
// document is idle again).
func (t *groupTable) done(key string) *groupWrite {
	t.check.acquire(rankLeaf)
	defer t.check.release(rankLeaf)
	t.mu.Lock()
	defer t.mu.Unlock()
	q := t.m[key]
	if len(q.waiting) == 0 {
		delete(t.m, key)
		return nil
	}
	return q.waiting[0]
}

// writeGrouped writes one document named by its _id through its queue.
func (r *Replica) writeGrouped(ctx context.Context, ns string, it Item) Outcome {
	key := docKey(ns, it.ID)
	w := &groupWrite{item: it, wake: make(chan bool, 1)}
	if !r.groups.join(key, w) && !<-w.wake {
		return w.out
	}
	group := r.leadGroup(ctx, ns, key)
	next := r.groups.done(key)
	for _, g := range group {
		if g != w {
			g.wake <- false
		}
	}
	if next != nil {
		next.wake <- true
	}
	return w.out
}

// leadGroup runs the leader's group and returns the writes it ran (their
// out set); the others it took go back to the queue.
func (r *Replica) leadGroup(ctx context.Context, ns, key string) []*groupWrite {
	var (
		group   []*groupWrite
		refused []int
	)
	func() {
		nsTurn := r.nss.acquire(false, ns)
		defer nsTurn.release()
		doc := r.docs.acquire(true, key)
		defer doc.release()
		release := r.hold()
		defer release()
		// Taken only now, with the lease: everything that arrived while
		// the lease was waited for rides along.
		group = r.groups.take(key, maxGroupOps)
		if len(group) > 1 {
			// The others' writes must not fail because the leader's
			// client went away: once taken, they run to the end, as a
			// write whose op is logged does anyway.
			ctx = context.WithoutCancel(ctx)
		}
		c := &chunk{r: r, ns: ns, items: make([]Item, len(group)), out: make([]Outcome, len(group)), keys: make([]string, len(group)), maxBytes: maxGroupBytes}
		for i, g := range group {
			c.items[i], c.keys[i] = g.item, key
		}
		c.phases(ctx)
		r.groups.putBack(key, group[len(c.items):])
		group = group[:len(c.items)]
		for i, g := range group {
			g.out = c.out[i]
		}
		r.met.groupOps.Observe(float64(len(group)))
		if n := len(group); n > 1 {
			r.met.coalesced.Add(float64(n - 1))
			refused = c.refused
		}
	}()
	// The database refused the group's document as a whole (a unique
	// index): it was undone, and the retry records of its statements
	// dropped. Which writes the database refuses by themselves is only
	// known by running each alone, after the group's turn (chunk.run
	// takes the lease again).
	for _, i := range refused {
		c := &chunk{r: r, ns: ns, items: []Item{group[i].item}, out: []Outcome{{}}, ordered: true}
		c.run(ctx)
		group[i].out = c.out[0]
	}
	return group
}
