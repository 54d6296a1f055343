package replica

import (
	"context"
	"errors"
	"slices"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/oplog"
)

// chunkSize bounds how many documents one log append and one set of held
// leases cover: multi-document writes are logged in groups (one fsync per
// group) without holding an unbounded number of leases.
const chunkSize = 64

// Write captures, logs and applies items (see Local).
func (r *Replica) Write(ctx context.Context, ns string, items []Item, ordered bool) []Outcome {
	if len(items) == 1 && items[0].Filter == nil {
		// The hot path (one document named by its _id): stored together
		// with the other writes waiting for the same document.
		return []Outcome{r.writeGrouped(ctx, ns, items[0])}
	}
	out := make([]Outcome, len(items))
	logged := false
	for start := 0; start < len(items); start += chunkSize {
		end := min(start+chunkSize, len(items))
		c := &chunk{r: r, ns: ns, items: items[start:end], out: out[start:end], ordered: ordered}
		c.run(ctx)
		logged = logged || len(c.logged) > 0
		if c.stopped {
			break
		}
	}
	if logged {
		r.notify()
	}
	return out
}

// chunk is one group of up to chunkSize items of a local write. run takes
// the namespace (shared), every document's lease (in key order) and a
// clock hold, then goes through its phases, each a method:
//
//	stage   read each document, compute its op, preview the merge: nothing
//	        is logged yet, so a refusal costs nothing
//	append  one log append (one fsync) for every op of the chunk; from
//	        here on the ops exist and are replicated whatever happens
//	store   write each document; one the database refuses for good is
//	        undone by a compensating op (storing, then undoing: see
//	        storeDoc)
//	finish  mark what was applied
//
// An ordered write stops at its first failure: the chunk is stopped, and
// no later chunk runs.
type chunk struct {
	r       *Replica
	ns      string
	items   []Item
	out     []Outcome
	ordered bool

	keys     []string
	states   map[string]*docState
	order    []*docState // documents with ops, in order of first op
	ops      []*crdt.Op  // staged, in item order
	logged   []*crdt.Op  // appended: the staged ops, then compensations
	applied  []*crdt.Op
	undoing  bool // ordered: a document was refused, every later one is undone
	stopped  bool // ordered: a failure; no later item or chunk runs
	prefetch bool // states holds documents read in advance (their first use needs no read)

	// A group of writers (group.go) bounds the bytes of its ops: stage
	// stops once staged reaches maxBytes (0: no bound) and cuts items
	// and out there, and storeDoc lists in refused the items of a
	// document the database refused (each is then run again alone).
	maxBytes int
	staged   int
	refused  []int
}

func (c *chunk) run(ctx context.Context) {
	r := c.r
	c.keys = make([]string, len(c.items))
	for i, it := range c.items {
		c.keys[i] = docKey(c.ns, it.ID)
	}
	ns := r.nss.acquire(false, c.ns)
	defer ns.release()
	docs := r.docs.acquire(true, c.keys...)
	defer docs.release()
	release := r.hold()
	defer release()
	c.phases(ctx)
}

// phases runs stage, append, store and finish; the caller holds the
// namespace, every document's lease and a clock hold.
func (c *chunk) phases(ctx context.Context) {
	r := c.r
	c.stage(ctx)
	recs := c.records()
	if len(c.ops) == 0 {
		if len(recs) > 0 {
			if err := r.olog.AppendLocalRecords(ctx, nil, recs); err != nil {
				r.log.Warn("recording retryable statements that wrote nothing failed; a retry runs them again", "ns", c.ns, "err", err)
			}
		}
		return
	}
	if !c.append(ctx, recs) {
		return
	}
	c.store(ctx)
	c.finish()
}

// fail records item i's failure; an ordered write stops there.
func (c *chunk) fail(i int, err error) {
	c.out[i] = Outcome{Done: true, Err: err}
	if c.ordered {
		c.stopped = true
	}
}

func (c *chunk) stage(ctx context.Context) {
	c.states = map[string]*docState{}
	if len(c.items) > 1 && c.r.caps.BatchReads {
		// One query for all the documents (and one for their tombstones)
		// instead of one or two per document.
		if err := c.r.prefetch(ctx, c.ns, c.items, c.keys, c.states); err != nil {
			c.r.log.Warn("prefetching documents", "ns", c.ns, "err", err)
			clear(c.states)
		}
	}
	c.prefetch = len(c.states) > 0
	firstUse := map[string]bool{}
	for i := range c.items {
		c.stageItem(ctx, i, firstUse)
		if c.stopped {
			return
		}
		if c.maxBytes > 0 && c.staged >= c.maxBytes && i+1 < len(c.items) {
			c.items, c.out, c.keys = c.items[:i+1], c.out[:i+1], c.keys[:i+1]
			return
		}
	}
}

// stageItem reads item i's document (unless an earlier item of the chunk
// or the prefetch did), computes its op and folds it into the preview.
func (c *chunk) stageItem(ctx context.Context, i int, used map[string]bool) {
	r, it, key := c.r, c.items[i], c.keys[i]
	ds := c.states[key]
	var found bool
	switch {
	case ds != nil && c.prefetch && !used[key]:
		used[key] = true
		found = ds.cur.Doc != nil
	case ds == nil:
		var err error
		ds, found, err = r.load(ctx, c.ns, it.ID, it.Filter)
		if err != nil {
			c.fail(i, errorf(CodeInternalError, "edgenode: %v", err))
			return
		}
		c.states[key] = ds
	default:
		found = ds.cur.Doc != nil
	}
	if it.Filter != nil && !found {
		c.out[i] = Outcome{Done: true}
		return
	}
	ts := r.clock.Now()
	op, err := it.Compute(ds.cur, found, ts)
	if err != nil {
		c.fail(i, err)
		return
	}
	if op == nil {
		c.out[i] = Outcome{Done: true, Found: found, Before: ds.cur.Doc, After: ds.cur.Doc}
		return
	}
	// Ops outlive the request: nothing may alias the client's message buffer.
	op.Origin, op.TS, op.NS = r.node, ts, c.ns
	op.ID = ds.id
	op.Doc, op.Update = cloneRaw(op.Doc), cloneRaw(op.Update)
	next, _, err := crdt.Apply(ds.cur, op)
	if err == nil {
		err = r.checkSize(op, next)
	}
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = errorf(CodeBadValue, "edgenode: %v", err)
		}
		c.fail(i, e)
		return
	}
	c.out[i] = Outcome{Done: true, Found: found, Op: op, Before: ds.cur.Doc, After: next.Doc}
	ds.cur = next
	if len(ds.ops) == 0 {
		c.order = append(c.order, ds)
	}
	ds.ops = append(ds.ops, op)
	ds.stmts = append(ds.stmts, i)
	c.ops = append(c.ops, op)
	c.staged += len(op.Doc) + len(op.Update)
}

// records are the results of the chunk's retryable statements that are
// done without error, to be written with its ops.
func (c *chunk) records() []oplog.Record {
	var recs []oplog.Record
	var txn *Txn
	var stmts []StmtResult
	flush := func() {
		if len(stmts) > 0 {
			recs = append(recs, c.r.retry.plan(txn, stmts)...)
		}
		stmts = nil
	}
	for i, it := range c.items {
		o := c.out[i]
		if it.Txn == nil || it.Result == nil || !o.Done || o.Err != nil {
			continue
		}
		res := it.Result(o)
		if res == nil {
			continue
		}
		if it.Txn != txn {
			flush()
			txn = it.Txn
		}
		stmts = append(stmts, StmtResult{ID: it.StmtID, Result: res})
	}
	flush()
	return recs
}

// append logs the staged ops (one fsync), with the records of the chunk's
// retryable statements in the same transaction, and tells replication.
// When the log refuses them, nothing was written: every staged item fails
// and the write stops.
func (c *chunk) append(ctx context.Context, recs []oplog.Record) bool {
	r := c.r
	if err := r.olog.AppendLocalRecords(ctx, c.ops, recs); err != nil {
		r.log.Error("op log append failed; write refused", "ns", c.ns, "err", err)
		for _, ds := range c.order {
			for _, i := range ds.stmts {
				c.out[i] = Outcome{Done: true, Err: errorf(CodeInternalError, "edgenode: op log append failed: %v", err)}
			}
		}
		c.stopped = true
		return false
	}
	for _, op := range c.ops {
		r.met.opsCaptured.WithLabelValues(op.Kind.String()).Inc()
	}
	r.notify()
	c.logged = c.ops
	if r.fault != nil {
		r.fault(FaultAfterAppend)
	}
	return true
}

// store writes every document of the chunk: brand new ones with one
// insertMany where it can, the others one by one.
func (c *chunk) store(ctx context.Context) {
	inserted := c.r.insertFresh(ctx, c.ns, c.order)
	for _, ds := range c.order {
		c.storeDoc(ctx, ds, inserted[ds])
	}
}

// storeDoc stores one document's ops, or, once the chunk is undoing,
// undoes them. A document the database refuses for good (a unique index
// other than _id) is undone and its items get the database's error; an
// ordered write then undoes every later document too (their items are
// not done: the write stopped before them). Any other failure leaves the
// ops unapplied in the log, where the next start re-applies them.
func (c *chunk) storeDoc(ctx context.Context, ds *docState, inserted bool) {
	r := c.r
	mine := slices.Clone(ds.ops)
	var err error
	if inserted {
		mine = ds.inserted
	} else if !c.undoing {
		err = r.storeOps(ctx, ds)
	}
	var ae *applyError
	switch {
	case c.undoing:
		c.undo(ctx, ds, mine)
		for _, i := range ds.stmts {
			c.out[i] = Outcome{}
		}
	case err == nil:
		c.applied = append(c.applied, mine...)
	case errors.As(err, &ae):
		c.undo(ctx, ds, mine)
		for _, i := range ds.stmts {
			c.out[i] = Outcome{Done: true, Err: DBError(ae.err)}
		}
		c.refused = append(c.refused, ds.stmts...)
		if c.ordered {
			c.undoing, c.stopped = true, true
		}
	case transient(err):
		// The database was unreachable or between primaries for
		// StoreRetry. The ops are logged (and replicating): Settle stores
		// them once the database has a primary again (the front-end's
		// settle loop), and in any case before the next captured write
		// runs, the client's retry among them, which then finds its
		// statement recorded.
		r.unstored.add(mine, r.met.unstored)
		r.log.Warn("a logged local write could not be stored (no primary?); it is stored once the database takes writes again", "ns", c.ns, "id", ds.id, "err", err)
		for _, i := range ds.stmts {
			c.out[i] = Outcome{Done: true, Err: errorf(CodeNotWritablePrimary, "edgenode: the write is logged but the database did not take it: %v", err)}
		}
		if c.ordered {
			c.stopped = true
		}
	default:
		r.log.Error("applying a logged local write failed; it stays in the log and is re-applied at restart", "ns", c.ns, "id", ds.id, "err", err)
		for _, i := range ds.stmts {
			c.out[i] = Outcome{Done: true, Err: errorf(CodeInternalError, "edgenode: write logged but not yet applied: %v", err)}
		}
		if c.ordered {
			c.stopped = true
		}
	}
}

// undo logs and stores a compensating op for a document's logged ops; the
// records of its retryable statements go in the same append (a retry runs
// them again, as MongoDB records only statements that succeeded).
func (c *chunk) undo(ctx context.Context, ds *docState, mine []*crdt.Op) {
	var forget []oplog.Record
	for _, i := range ds.stmts {
		if it := c.items[i]; it.Txn != nil {
			forget = append(forget, c.r.retry.forget(it.Txn, []int32{it.StmtID})...)
		}
	}
	comp, err := c.r.compensate(ctx, ds, mine, forget)
	if err != nil {
		c.r.log.Error("compensating a refused local write failed; it stays unapplied in the log and is retried at restart", "ns", c.ns, "id", ds.id, "err", err)
		return
	}
	c.logged = append(c.logged, comp)
	c.applied = append(c.applied, mine...)
	c.applied = append(c.applied, comp)
}

func (c *chunk) finish() {
	r := c.r
	if len(c.applied) == 0 {
		return
	}
	if r.fault != nil {
		r.fault(FaultAfterApply)
	}
	if err := r.olog.MarkApplied(c.applied...); err != nil {
		r.log.Warn("marking ops applied", "err", err)
	}
	r.met.opsApplied.WithLabelValues("local").Add(float64(len(c.applied)))
}

// checkSize refuses a write whose op, or whose document as stored with its
// metadata, would exceed maxDoc: replication could not carry it.
func (r *Replica) checkSize(op *crdt.Op, next crdt.State) error {
	if n := len(op.Doc) + len(op.Update); n > r.maxDoc {
		return errorf(CodeBSONObjectTooLarge, "edgenode: this write to %s is %d bytes; replicated writes are limited to %d (mongo.max_document_bytes): keep large blobs out of the database (the media cache), or make the collection local-only", op.NS, n, r.maxDoc)
	}
	if next.Doc == nil {
		return nil
	}
	// The stored form is the document plus metadata that keeps clocks and
	// pending commutative ops (and copies of the values the document does
	// not show as assigned): bounded cheaply first (values twice,
	// generously per pending op), encoded only when it may be near the
	// limit.
	raw, err := bson.Marshal(next.Doc)
	if err != nil {
		return err
	}
	if 2*len(raw)+256*next.Meta.PendingOps()+64<<10 < r.maxDoc {
		return nil
	}
	if n := len(raw) + len(next.Meta.EncodeWith(raw)); n > r.maxDoc {
		return errorf(CodeBSONObjectTooLarge, "edgenode: after this write the document %v of %s would take %d bytes with its replication metadata; the limit is %d (mongo.max_document_bytes): keep large blobs out of the database (the media cache), or make the collection local-only", op.ID, op.NS, n, r.maxDoc)
	}
	return nil
}
