package replica

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// unstoredOps are the local ops whose store gave up on a transient error
// (the database had no primary for StoreRetry): logged, answered with
// CodeNotWritablePrimary, not applied. Settle stores them.
//
// Settling is a turn (rankSettle, between the write gate and namespaces):
// one Settle at a time stores the ops it found, and a Settle called
// meanwhile waits for it, then looks again. Two at once would store the
// same ops twice (harmless, the apply is idempotent, but counted twice
// and written twice). The state machine, under mu (a leaf, never held
// across I/O):
//
//	idle      settling == nil: the next Settle takes the ops there are
//	settling  settling != nil: a Settle is storing a batch; others wait
//	          for the channel to close
//
// A batch stored without error leaves the set; ops that gave up meanwhile
// stay for the next Settle.
type unstoredOps struct {
	check *rankChecker
	mu    sync.Mutex
	ops   map[uint64]*crdt.Op // by seq (all are this node's)
	// settling is closed when the Settle storing a batch ends (nil: none).
	settling chan struct{}
	// n is len(ops), read without mu: compaction and Settle's fast path.
	n atomic.Int64
	// added receives a value whenever ops are added (values coalesce):
	// the front-end's settle loop waits on it (Unstored).
	added chan struct{}
}

func (u *unstoredOps) lock() {
	u.check.acquire(rankLeaf)
	u.mu.Lock()
}

func (u *unstoredOps) unlock() {
	u.mu.Unlock()
	u.check.release(rankLeaf)
}

// add records ops whose store gave up; gauge (nil in tests) is set to how
// many wait now.
func (u *unstoredOps) add(ops []*crdt.Op, gauge prometheus.Gauge) {
	u.lock()
	if u.ops == nil {
		u.ops = map[uint64]*crdt.Op{}
	}
	for _, op := range ops {
		u.ops[op.Seq] = op
	}
	u.setLen(gauge)
	u.unlock()
	select {
	case u.added <- struct{}{}:
	default:
	}
}

// setLen publishes len(ops), to n and to gauge (nil: none); under mu, so
// that the gauge's value is never an older count.
func (u *unstoredOps) setLen(gauge prometheus.Gauge) {
	u.n.Store(int64(len(u.ops)))
	if gauge != nil {
		gauge.Set(float64(len(u.ops)))
	}
}

// Unstored returns how many local ops wait for Settle, and a channel that
// receives a value whenever more are added (values coalesce; it is meant
// for one receiver, the front-end's settle loop). Reading n before
// waiting on the channel loses no addition: the value is sent after n
// moved.
func (r *Replica) Unstored() (n int, added <-chan struct{}) {
	return int(r.unstored.n.Load()), r.unstored.added
}

// Settle stores the local ops whose store gave up on a transient error
// (the database had no primary for StoreRetry; their writes were answered
// with CodeNotWritablePrimary), applying them as the replay at start does
// (idempotent: an op already stored changes nothing). The front-end calls
// it admitted: before each captured write while any are left, so that a
// driver's retry of such a write, answered from its record, finds it
// stored, and no later write of the document reads it without them; and
// from its settle loop once the database has a primary again, so that
// they do not wait for a write. One Settle stores at a time; another
// waits for it (or ctx) and then stores what is left. It costs one atomic
// load when none are left.
func (r *Replica) Settle(ctx context.Context) error {
	u := &r.unstored
	for u.n.Load() > 0 {
		u.check.acquire(rankSettle)
		u.lock()
		if wait := u.settling; wait != nil {
			u.unlock()
			select {
			case <-wait:
				u.check.release(rankSettle)
				continue
			case <-ctx.Done():
				u.check.release(rankSettle)
				return fmt.Errorf("replica: wait for the logged writes being stored: %w", ctx.Err())
			}
		}
		if len(u.ops) == 0 { // another Settle stored them meanwhile
			u.unlock()
			u.check.release(rankSettle)
			return nil
		}
		batch := slices.SortedFunc(maps.Values(u.ops), func(a, b *crdt.Op) int { return cmp.Compare(a.Seq, b.Seq) })
		done := make(chan struct{})
		u.settling = done
		u.unlock()

		err := r.applyOps(ctx, batch, "settle")
		// On failure, those the log marked applied are stored: only the
		// others are tried again.
		applied := r.olog.Applied(r.node)

		u.lock()
		if err == nil {
			for _, op := range batch {
				delete(u.ops, op.Seq)
			}
		} else {
			maps.DeleteFunc(u.ops, func(seq uint64, _ *crdt.Op) bool { return seq <= applied })
		}
		left := len(u.ops)
		u.setLen(r.met.unstored)
		u.settling = nil
		close(done)
		u.unlock()
		u.check.release(rankSettle)
		if err != nil {
			return fmt.Errorf("replica: store logged ops: %w", err)
		}
		r.log.Info("logged local writes stored after the database came back", "ops", len(batch), "left", left)
		return nil
	}
	return nil
}
