package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// applyWorkers is how many documents applyOps writes at once: more where
// the database serves connections in parallel. The embedded database
// (Capabilities.Sync set: SQLite) commits one write at a time, so more
// connections only queue there. A separate server (FerretDB on
// PostgreSQL, MongoDB) overlaps them: FerretDB 1.24 on PostgreSQL 15,
// measured on a loaded 2-core machine, served findOne/replaceOne by _id
// 4x and 2.3x faster with 8 clients than with 1, and no faster with 32.
func (r *Replica) applyWorkers() int {
	if r.caps.Sync != nil {
		return 4
	}
	return 8
}

// ApplyRemote durably logs peers' ops (duplicates are ignored) and applies
// them to the local database. Ops are validated first; an invalid op, or
// one whose timestamp is more than MaxClockSkew ahead of the wall clock (a
// *ClockSkewError), fails the whole call before anything is logged.
func (r *Replica) ApplyRemote(ctx context.Context, ops []*crdt.Op) error {
	for i, op := range ops {
		if err := op.Validate(); err != nil {
			return fmt.Errorf("replica: remote op %d (%s:%d): %w", i, op.Origin, op.Seq, err)
		}
		if op.Origin == "" || op.Seq == 0 {
			return fmt.Errorf("replica: remote op %d has no origin/seq", i)
		}
	}
	for _, op := range ops {
		if err := r.CheckClock(op.TS); err != nil {
			return err
		}
	}
	for _, op := range ops {
		r.clock.Observe(op.TS)
	}
	if err := r.olog.AppendRemote(ctx, ops); err != nil {
		return fmt.Errorf("replica: log remote ops: %w", err)
	}
	err := r.applyOps(ctx, ops, "remote")
	if err == nil {
		// These ops may have cleared the way for a parked one (a resolution
		// made on another node): see conflicts.go.
		r.settleParked(ctx, ops)
	}
	// Relays (package repl) stream peers' ops they applied: wake them.
	r.notify()
	return err
}

// applyOps applies already-logged ops (from peers, or unapplied ones at
// start) to the local database, document by document. An op the database
// refuses for good (a peer's write colliding with a local unique index, or a
// document this database cannot store) is parked in edgenode_meta.conflicts
// with a log line and a metric, and counted as applied: replication never
// stalls on it. Transient errors return early; the remaining ops stay
// unapplied in the log and are applied by a later call or at restart.
func (r *Replica) applyOps(ctx context.Context, ops []*crdt.Op, source string) error {
	ops, err := r.skipNotReplicated(ops)
	if err != nil {
		return err
	}
	// DDL ops split the batch: the document ops before one are applied
	// before it, those after it after it.
	for len(ops) > 0 {
		i := slices.IndexFunc(ops, func(op *crdt.Op) bool { return op.Kind == crdt.DDL })
		if i < 0 {
			return r.applyDocOps(ctx, ops, source)
		}
		if err := r.applyDocOps(ctx, ops[:i], source); err != nil {
			return err
		}
		if err := r.applyDDLOp(ctx, ops[i], source); err != nil {
			return err
		}
		ops = ops[i+1:]
	}
	return nil
}

// skipNotReplicated marks applied, without writing them, the ops of
// namespaces this node does not replicate (configs differ between nodes,
// or a system namespace), and returns the others.
func (r *Replica) skipNotReplicated(ops []*crdt.Op) ([]*crdt.Op, error) {
	var skipped []*crdt.Op
	ops = slices.DeleteFunc(slices.Clone(ops), func(op *crdt.Op) bool {
		db, coll := splitNS(op.NS)
		if r.replicated(db, coll) {
			return false
		}
		skipped = append(skipped, op)
		return true
	})
	if len(skipped) == 0 {
		return ops, nil
	}
	r.met.conflicts.WithLabelValues("not_replicated").Add(float64(len(skipped)))
	r.log.Warn("skipping ops for namespaces this node does not replicate (check mongo.replicate/local_only on every node)",
		"ops", len(skipped), "first_ns", skipped[0].NS, "origin", skipped[0].Origin)
	if err := r.olog.MarkApplied(skipped...); err != nil {
		return nil, fmt.Errorf("mark applied: %w", err)
	}
	return ops, nil
}

// applyDDLOp applies one logged DDL op, with its namespace held
// exclusively, and marks it applied.
func (r *Replica) applyDDLOp(ctx context.Context, op *crdt.Op, source string) error {
	ns := r.nss.acquire(true, op.NS)
	err := r.applyDDL(ctx, op)
	ns.release()
	var ae *applyError
	if errors.As(err, &ae) {
		r.park(ctx, op, ae)
	} else if err != nil {
		return err
	}
	if err := r.olog.MarkApplied(op); err != nil {
		return fmt.Errorf("mark applied: %w", err)
	}
	r.met.opsApplied.WithLabelValues(source).Inc()
	return nil
}

// docGroup is the ops of one batch for one document.
type docGroup struct {
	key string
	ns  string
	id  bson.RawValue
	ops []*crdt.Op
}

func (r *Replica) applyDocOps(ctx context.Context, ops []*crdt.Op, source string) error {
	if len(ops) == 0 {
		return nil
	}
	var groups []*docGroup
	byKey := map[string]*docGroup{}
	for _, op := range ops {
		k := docKey(op.NS, op.ID)
		g := byKey[k]
		if g == nil {
			g = &docGroup{key: k, ns: op.NS, id: op.ID}
			byKey[k] = g
			groups = append(groups, g)
		}
		g.ops = append(g.ops, op)
	}
	workers := r.applyWorkers()
	if len(groups) < 2*workers {
		for _, g := range groups {
			if err := r.applyGroup(ctx, g, source); err != nil {
				return err
			}
		}
		return nil
	}
	// Documents are independent: apply several at once (the database
	// serves connections in parallel; each document is still one
	// read-merge-write under its own lease). The workers are owned by this
	// call, which waits for them.
	var (
		next     atomic.Int64
		firstErr atomic.Pointer[error]
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for firstErr.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(groups) {
					return
				}
				if err := r.applyGroup(ctx, groups[i], source); err != nil {
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		return *err
	}
	return nil
}

// applyGroup applies one document's ops under its namespace (shared) and
// its lease, and marks them applied. An op the database refuses for good
// is found (one by one) and parked.
func (r *Replica) applyGroup(ctx context.Context, g *docGroup, source string) error {
	ns := r.nss.acquire(false, g.ns)
	defer ns.release()
	doc := r.docs.acquire(true, g.key)
	defer doc.release()
	ds, _, err := r.load(ctx, g.ns, g.id, nil)
	if err != nil {
		return err
	}
	ds.ops = slices.Clone(g.ops)
	err = r.storeOps(ctx, ds)
	var ae *applyError
	switch {
	case errors.As(err, &ae) && len(g.ops) > 1:
		if err := r.applyOneByOne(ctx, ds, g.ops); err != nil {
			return err
		}
	case errors.As(err, &ae):
		r.park(ctx, g.ops[0], ae)
	case err != nil:
		return err
	}
	if r.fault != nil {
		r.fault(FaultAfterApply)
	}
	if err := r.olog.MarkApplied(g.ops...); err != nil {
		return fmt.Errorf("mark applied: %w", err)
	}
	r.met.opsApplied.WithLabelValues(source).Add(float64(len(g.ops)))
	return nil
}

// applyOneByOne finds the culprit(s) of a refused group: it applies the
// ops one at a time, parking those the database refuses.
func (r *Replica) applyOneByOne(ctx context.Context, ds *docState, ops []*crdt.Op) error {
	if err := r.reload(ctx, ds); err != nil {
		return err
	}
	for _, op := range ops {
		ds.ops = []*crdt.Op{op}
		err := r.storeOps(ctx, ds)
		if err == nil {
			continue
		}
		var ae *applyError
		if !errors.As(err, &ae) {
			return err
		}
		r.park(ctx, op, ae)
		if err := r.reload(ctx, ds); err != nil {
			return err
		}
	}
	return nil
}

// park records an op the local database refused for good.
func (r *Replica) park(ctx context.Context, op *crdt.Op, ae *applyError) {
	reason := "invalid"
	if ae.unique {
		reason = "unique"
	}
	r.met.conflicts.WithLabelValues(reason).Inc()
	r.log.Warn("operation refused by the local database; parked in edgenode_meta.conflicts",
		"reason", reason, "ns", op.NS, "id", op.ID, "origin", op.Origin, "seq", op.Seq, "ts", op.TS.String(), "err", ae.err)
	raw, err := op.MarshalBSON()
	if err != nil {
		r.log.Error("encoding parked op", "err", err)
		return
	}
	rec := bson.D{{Key: "_id", Value: fmt.Sprintf("%s:%d", op.Origin, op.Seq)}, {Key: "ns", Value: op.NS}, {Key: "id", Value: op.ID},
		{Key: "reason", Value: reason}, {Key: "error", Value: ae.err.Error()}, {Key: "at", Value: time.Now().UTC()}, {Key: "op", Value: bson.Raw(raw)}}
	res, err := r.metaColl(conflictColl).ReplaceOne(ctx, bson.D{{Key: "_id", Value: rec[0].Value}}, rec, options.Replace().SetUpsert(true))
	if err != nil {
		r.log.Error("recording parked op", "err", err)
		return
	}
	r.addParked(res.UpsertedCount)
}
