package replica

import (
	"sync"
	"time"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// holds are the clock readings taken by local writes that may still hand
// out timestamps whose ops are not yet in the log. A hold is a
// registration, not a turn: nothing ever waits for one. Its mutex is a
// leaf.
type holds struct {
	check *rankChecker
	mu    sync.Mutex
	m     map[uint64]crdt.Timestamp
	seq   uint64
}

// hold registers a local write about to take timestamps from the clock:
// until release, Frontier stays at or below the clock reading at this
// moment, so every op with a timestamp at or below the frontier is
// already in the log. Take it after the write's turns (it only has to
// come before the write's first clock reading).
func (r *Replica) hold() (release func()) {
	h := &r.holds
	h.check.acquire(rankLeaf)
	h.mu.Lock()
	if h.m == nil {
		h.m = map[uint64]crdt.Timestamp{}
	}
	h.seq++
	id := h.seq
	h.m[id] = r.clock.Last()
	h.mu.Unlock()
	h.check.release(rankLeaf)
	return func() {
		h.check.acquire(rankLeaf)
		h.mu.Lock()
		delete(h.m, id)
		h.mu.Unlock()
		h.check.release(rankLeaf)
	}
}

// Frontier returns a clock reading F such that every local op with a
// timestamp at or below F has been appended to the log already, and every
// later one will be above F.
func (r *Replica) Frontier() crdt.Timestamp {
	h := &r.holds
	h.check.acquire(rankLeaf)
	defer h.check.release(rankLeaf)
	h.mu.Lock()
	defer h.mu.Unlock()
	f := r.clock.Last()
	for _, t := range h.m {
		if t.Compare(f) < 0 {
			f = t
		}
	}
	return f
}

// ObserveClock folds a peer's clock reading into this node's HLC, so that
// writes made here afterwards are ordered after everything that peer did.
// A reading more than MaxClockSkew ahead of the wall clock is not folded
// in: a *ClockSkewError says so.
func (r *Replica) ObserveClock(ts crdt.Timestamp) error {
	if ahead, ok := r.clock.ObserveWithin(ts, r.maxSkew); !ok {
		return &ClockSkewError{TS: ts, Ahead: ahead, Max: r.maxSkew}
	}
	return nil
}

// CheckClock returns a *ClockSkewError when ts is more than MaxClockSkew
// ahead of this node's wall clock (ApplyRemote would refuse an op
// carrying it), nil otherwise.
func (r *Replica) CheckClock(ts crdt.Timestamp) error {
	if ahead := r.clock.Ahead(ts); ahead > r.maxSkew {
		return &ClockSkewError{TS: ts, Ahead: ahead, Max: r.maxSkew}
	}
	return nil
}

// resumeClock starts the clock above the op log's newest timestamp: this
// node's ops keep increasing (and stay distinct) across restarts, and
// every clock reading it announced stays below what it stamps next. A
// newest timestamp more than MaxClockSkew ahead of the wall clock cannot
// have come from a reading this node accepted since it bounds them (every
// one was at most MaxClockSkew ahead when it was folded in), so it comes
// from a wall clock set back, or from a version that did not bound peers'
// readings: the clock then resumes MaxClockSkew ahead of the wall clock,
// which is still above everything accepted under the bound, and says so.
func (r *Replica) resumeClock(newest crdt.Timestamp) {
	ahead, ok := r.clock.ObserveWithin(newest, r.maxSkew)
	if ok {
		return
	}
	r.clock.Observe(crdt.Timestamp{Wall: time.Now().Add(r.maxSkew).UnixMilli()})
	r.log.Error("the op log's clock is far ahead of this node's wall clock: the clock resumes mongo.max_clock_skew ahead of the wall clock instead. "+
		"Either this node's wall clock was set back (check NTP), or an earlier version accepted a peer's clock that ran ahead. "+
		"Writes already stamped in the future keep winning over newer ones until the wall clock gets there",
		"op_log_clock", newest.String(), "ahead", ahead.Round(time.Second), "max_clock_skew", r.maxSkew)
}

// SetStable gives the compaction frontier (see Replication.SetStable).
func (r *Replica) SetStable(ts crdt.Timestamp) { r.stable.Store(&ts) }

// compact folds the metadata's commutative ops at or below the compaction
// frontier into the value, once one was given.
func (r *Replica) compact(st crdt.State) crdt.State {
	if r.unstored.n.Load() > 0 {
		// A logged op waits for Settle: folded in later, it must not find
		// itself at or below a floor (taken for a duplicate, and lost).
		return st
	}
	if s := r.stable.Load(); s != nil {
		if m, ok := st.Meta.Compact(*s); ok {
			st.Meta = m
		}
	}
	return st
}
