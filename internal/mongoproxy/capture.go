package mongoproxy

import (
	"bytes"
	"context"
	"errors"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

// The capture stage: a decoded write command (writes.go) becomes items,
// one per document it writes, which the replica core logs and applies
// (replica.Local.Write); their outcomes become MongoDB's reply. A filter
// other than {_id: v} is first resolved to _ids with a find on this node.

// run inserts the documents (those a retry finds recorded count as
// inserted and are not inserted again).
func (c *insertCmd) run(ctx context.Context, p *Proxy, rt *retryCtx) []byte {
	if c.err != nil {
		return errorReply(c.err)
	}
	res := &writeResult{}
	items := make([]capItem, 0, len(c.docs))
	var pre []writeError
	for _, d := range c.docs {
		if d.err != nil {
			pre = append(pre, writeError{Index: d.stmt, Err: d.err})
			continue
		}
		if rec, e := rt.recorded(d.stmt); e != nil || rec != nil {
			if e != nil {
				pre = append(pre, writeError{Index: d.stmt, Err: e})
			} else {
				res.N++
			}
			continue
		}
		it := capItem{stmt: d.stmt, id: d.id, compute: insertCompute(c.ns, d.doc, d.id)}
		rt.mark(&it, d.stmt, func(outcome) []byte { return stmtResult(1, 0, bson.RawValue{}) })
		items = append(items, it)
	}
	// With ordered inserts a bad document stops the batch at its index:
	// only the documents before it run (parseInsert stopped there).
	outs := p.write(ctx, c.ns, items, c.ordered)
	for j, o := range outs {
		if !o.done {
			continue
		}
		if o.err != nil {
			res.Errors = append(res.Errors, writeError{Index: items[j].stmt, Err: o.err})
			continue
		}
		if o.op != nil {
			res.N++
		}
	}
	res.Errors = mergeErrors(res.Errors, pre)
	return res.reply()
}

// insertCompute inserts doc, unless its _id exists.
func insertCompute(ns string, doc bson.Raw, id bson.RawValue) computeFunc {
	return func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, error) {
		if found {
			return nil, errorf(codeDuplicateKey, "E11000 duplicate key error collection: %s index: _id_ dup key: { _id: %s }", ns, id.String())
		}
		return &crdt.Op{Kind: crdt.Insert, Doc: doc}, nil
	}
}

// mergeErrors merges two index-sorted write error lists.
func mergeErrors(a, b []writeError) []writeError {
	out := make([]writeError, 0, len(a)+len(b))
	for len(a) > 0 || len(b) > 0 {
		if len(b) == 0 || (len(a) > 0 && a[0].Index < b[0].Index) {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return out
}

// run applies the statements in order (an ordered update stops at the
// first that fails).
func (c *updateCmd) run(ctx context.Context, p *Proxy, rt *retryCtx) []byte {
	if c.err != nil {
		return errorReply(c.err)
	}
	res := &writeResult{isUpdate: true}
	for i, s := range c.stmts {
		e := s.err
		if e == nil {
			e = p.runUpdateStmt(ctx, c.ns, i, s, c.let, res, rt)
		}
		if e != nil {
			res.Errors = append(res.Errors, writeError{Index: i, Err: e})
			if c.ordered {
				break
			}
		}
	}
	return res.reply()
}

// runUpdateStmt runs update statement i and counts what it did in res (a
// retry finds what it did recorded, and counts that).
func (p *Proxy) runUpdateStmt(ctx context.Context, ns string, i int, s *updateStmt, let bson.RawValue, res *writeResult, rt *retryCtx) *mongoError {
	if rec, e := rt.recorded(i); e != nil || rec != nil {
		if rec != nil {
			addRecorded(res, i, rec)
		}
		return e
	}
	items, e := p.updateItems(ctx, ns, i, s, let)
	if e != nil {
		return e
	}
	if len(items) == 0 {
		return rt.record(ctx, i, stmtResult(0, 0, bson.RawValue{}))
	}
	for j := range items {
		id := items[j].id
		rt.mark(&items[j], i, func(o outcome) []byte { return stmtResult(updateCounts(o, id)) })
	}
	outs := p.write(ctx, ns, items, true)
	for j, o := range outs {
		if o.err != nil && o.done {
			e = o.err
			continue
		}
		n, m, up := updateCounts(o, items[j].id)
		res.N += n
		res.NModified += m
		if up.Type != 0 {
			res.Upserted = append(res.Upserted, upserted{Index: i, ID: up})
		}
	}
	return e
}

func docEqual(a, b bson.D) bool {
	ab, err1 := bson.Marshal(a)
	bb, err2 := bson.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ab, bb)
}

// run deletes what each statement matches, in order.
func (c *deleteCmd) run(ctx context.Context, p *Proxy, rt *retryCtx) []byte {
	if c.err != nil {
		return errorReply(c.err)
	}
	res := &writeResult{}
	for i, s := range c.stmts {
		e := s.err
		if e == nil {
			e = p.runDeleteStmt(ctx, c.ns, i, s, c.let, res, rt)
		}
		if e != nil {
			res.Errors = append(res.Errors, writeError{Index: i, Err: e})
			if c.ordered {
				break
			}
		}
	}
	return res.reply()
}

// runDeleteStmt runs delete statement i and counts what it did in res (a
// retry finds what it did recorded, and counts that).
func (p *Proxy) runDeleteStmt(ctx context.Context, ns string, i int, s *deleteStmt, let bson.RawValue, res *writeResult, rt *retryCtx) *mongoError {
	if rec, e := rt.recorded(i); e != nil || rec != nil {
		if rec != nil {
			addRecorded(res, i, rec)
		}
		return e
	}
	var items []capItem
	var e *mongoError
	if id, ok := idOnlyFilter(s.q); ok {
		items = []capItem{{stmt: i, id: id, compute: deleteCompute}}
	} else {
		ids, err := p.resolveIDs(ctx, ns, s.q, s.limit, bson.RawValue{}, s.hint, s.collation, let)
		if err != nil {
			e = fromReplica(replica.DBError(err))
		}
		for _, id := range ids {
			items = append(items, capItem{stmt: i, id: id, filter: s.q, compute: deleteCompute})
		}
	}
	if e != nil {
		return e
	}
	if len(items) == 0 {
		return rt.record(ctx, i, stmtResult(0, 0, bson.RawValue{}))
	}
	for j := range items {
		rt.mark(&items[j], i, func(o outcome) []byte {
			if o.op != nil {
				return stmtResult(1, 0, bson.RawValue{})
			}
			return stmtResult(0, 0, bson.RawValue{})
		})
	}
	for _, o := range p.write(ctx, ns, items, true) {
		switch {
		case !o.done:
		case o.err != nil:
			e = o.err
		case o.op != nil:
			res.N++
		}
	}
	return e
}

// deleteCompute deletes the document if it exists.
func deleteCompute(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, error) {
	if !found {
		return nil, nil
	}
	return &crdt.Op{Kind: crdt.Delete}, nil
}

// run updates or removes one document and answers with it. A retry
// gets the reply recorded the first time: the same value document.
func (c *famCmd) run(ctx context.Context, p *Proxy, rt *retryCtx) []byte {
	if c.err != nil {
		return errorReply(c.err)
	}
	if rec, e := rt.recorded(0); e != nil {
		return errorReply(e)
	} else if rec != nil {
		return rec
	}
	var outs []outcome
	var items []capItem
	// A document resolved by the filter may stop matching before its
	// lease is taken (a concurrent write); resolve again a few times, as
	// mongod retries a findAndModify whose document changed under it.
	const attempts = 5
	for attempt := 0; attempt < attempts; attempt++ {
		var err *mongoError
		if c.remove {
			items, err = p.famRemoveItems(ctx, c.ns, c.stmt, c.hasSort, c.let)
		} else {
			items, err = p.updateItems(ctx, c.ns, 0, c.stmt, c.let)
		}
		if err != nil {
			return errorReply(err)
		}
		if len(items) == 1 {
			// Recorded with the op: the reply this outcome gives, unless
			// the document stopped matching and another attempt follows.
			its, last := items, attempt == attempts-1
			rt.mark(&items[0], 0, func(o outcome) []byte {
				if !o.found && its[0].filter != nil && !last {
					return nil
				}
				return c.reply([]outcome{o}, its)
			})
		}
		outs = p.write(ctx, c.ns, items, true)
		if len(outs) == 0 || outs[0].found || outs[0].err != nil || items[0].filter == nil {
			break
		}
	}
	if len(outs) == 1 && outs[0].err != nil {
		return errorReply(outs[0].err)
	}
	reply := c.reply(outs, items)
	if len(items) == 0 {
		if e := rt.record(ctx, 0, reply); e != nil {
			return errorReply(e)
		}
	}
	return reply
}

// reply is findAndModify's answer: lastErrorObject and the document
// before or after (projected).
func (c *famCmd) reply(outs []outcome, items []capItem) []byte {
	idx, b := bsoncore.AppendDocumentStart(nil)
	var value bson.D
	lidx, b := bsoncore.AppendDocumentElementStart(b, "lastErrorObject")
	if len(outs) == 1 && outs[0].done && (outs[0].found || outs[0].op != nil) {
		o := outs[0]
		b = bsoncore.AppendInt32Element(b, "n", 1)
		if !c.remove {
			b = bsoncore.AppendBooleanElement(b, "updatedExisting", o.before != nil)
			if o.before == nil {
				id := items[0].id
				b = bsoncore.AppendValueElement(b, "upserted", bsoncore.Value{Type: bsoncore.Type(id.Type), Data: id.Value})
			}
		}
		if c.remove || !c.returnNew {
			value = o.before
		} else {
			value = o.after
		}
	} else {
		b = bsoncore.AppendInt32Element(b, "n", 0)
		if !c.remove {
			b = bsoncore.AppendBooleanElement(b, "updatedExisting", false)
		}
	}
	b, _ = bsoncore.AppendDocumentEnd(b, lidx)
	if value != nil {
		if c.fields != nil {
			value, _ = project(value, c.fields)
		}
		raw, err := bson.Marshal(value)
		if err != nil {
			return errorReply(errorf(codeInternalError, "edgenode: encode value: %v", err))
		}
		b = bsoncore.AppendDocumentElement(b, "value", raw)
	} else {
		b = bsoncore.AppendNullElement(b, "value")
	}
	b = bsoncore.AppendDoubleElement(b, "ok", 1)
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}

// resolveIDs runs the statement's filter on this node and returns the _ids
// it matches (at most limit when limit > 0), in sort order if given.
func (p *Proxy) resolveIDs(ctx context.Context, ns string, filter bson.Raw, limit int64, sort, hint, collation, let bson.RawValue) ([]bson.RawValue, error) {
	db, coll := splitNS(ns)
	c := bson.D{{Key: "find", Value: coll}, {Key: "filter", Value: filter}, {Key: "projection", Value: bson.D{{Key: "_id", Value: 1}}}}
	if limit > 0 {
		c = append(c, bson.E{Key: "limit", Value: limit})
	}
	for _, o := range []struct {
		k string
		v bson.RawValue
	}{{"sort", sort}, {"hint", hint}, {"collation", collation}, {"let", let}} {
		if o.v.Type != 0 && o.v.Type != bson.TypeNull {
			c = append(c, bson.E{Key: o.k, Value: o.v})
		}
	}
	cur, err := p.client.Database(db).RunCommandCursor(ctx, c)
	if err != nil {
		return nil, err
	}
	defer cur.Close(context.WithoutCancel(ctx))
	var ids []bson.RawValue
	for cur.Next(ctx) {
		v, err := cur.Current.LookupErr("_id")
		if err != nil {
			continue
		}
		ids = append(ids, bson.RawValue{Type: v.Type, Value: bytes.Clone(v.Value)})
	}
	return ids, cur.Err()
}

// updateItems turns a statement into document items: the _id of a plain
// _id filter, else the _ids the filter matches now; with upsert and no
// match, one item that creates the document.
func (p *Proxy) updateItems(ctx context.Context, ns string, stmt int, s *updateStmt, let bson.RawValue) ([]capItem, *mongoError) {
	if id, ok := idOnlyFilter(s.q); ok {
		return []capItem{{stmt: stmt, id: id, compute: updateCompute(ns, s, false)}}, nil
	}
	limit := int64(1)
	if s.multi {
		limit = 0
	}
	ids, err := p.resolveIDs(ctx, ns, s.q, limit, s.sort, s.hint, s.collation, let)
	if err != nil {
		return nil, fromReplica(replica.DBError(err))
	}
	items := make([]capItem, 0, len(ids))
	for _, id := range ids {
		items = append(items, capItem{stmt: stmt, id: id, filter: s.q, compute: updateCompute(ns, s, false)})
	}
	if len(items) == 0 && s.upsert {
		_, seedID := upsertSeed(s.q)
		id := s.spec.insertID
		if id.Type == 0 {
			id = seedID
		}
		if id.Type == 0 {
			id = rawValue(bson.NewObjectID())
		}
		items = append(items, capItem{stmt: stmt, id: id, compute: updateCompute(ns, s, true)})
	}
	return items, nil
}

// updateCompute returns the function deciding the op of an update statement
// for one document (upsertOnly: the item creates the document the filter
// matched none of).
func updateCompute(ns string, s *updateStmt, upsertOnly bool) computeFunc {
	return func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, error) {
		if found && upsertOnly {
			return nil, errorf(codeDuplicateKey, "E11000 duplicate key error collection: %s index: _id_ (the upsert's _id exists but does not match the filter)", ns)
		}
		if !found && !s.upsert {
			return nil, nil
		}
		inserting := !found
		var seed []kv
		if inserting {
			seed, _ = upsertSeed(s.q)
		}
		if found {
			if e := checkApplicable(st.Doc, s.spec); e != nil {
				return nil, e
			}
		}
		u, empty, err := buildUpdate(s.spec, ts, inserting, seed)
		if err != nil {
			return nil, errorf(codeBadValue, "edgenode: %v", err)
		}
		if empty && !inserting {
			return nil, nil
		}
		return &crdt.Op{Kind: crdt.Update, Update: u}, nil
	}
}

// famRemoveItems is the item of a findAndModify with remove: the first
// document the filter matches (in sort order).
func (p *Proxy) famRemoveItems(ctx context.Context, ns string, s *updateStmt, hasSort bool, let bson.RawValue) ([]capItem, *mongoError) {
	if id, ok := idOnlyFilter(s.q); ok && !hasSort {
		return []capItem{{id: id, compute: deleteCompute}}, nil
	}
	ids, err := p.resolveIDs(ctx, ns, s.q, 1, s.sort, s.hint, s.collation, let)
	if err != nil {
		return nil, fromReplica(replica.DBError(err))
	}
	if len(ids) == 0 {
		return nil, nil
	}
	return []capItem{{id: ids[0], filter: s.q, compute: deleteCompute}}, nil
}

// capItem is one document-level write of a client command: the statement
// it comes from, and what the replica core needs (replica.Item).
type capItem struct {
	stmt   int
	id     bson.RawValue
	filter bson.Raw // re-checked under the document's lease; nil when the statement names the _id
	// compute decides the op for the document's current state (nil op:
	// nothing to write) or refuses with a write error (a *mongoError).
	compute computeFunc
	// A retryable statement (retryCtx.mark): result is recorded with the
	// item's op (nil result: nothing recorded).
	txn    *replica.Txn
	stmtID int32
	result func(outcome) []byte
}

// computeFunc is a replica.Item's Compute: it returns the client's own
// error, a *mongoError, which the outcome carries back.
type computeFunc = func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, error)

// outcome is what happened to one capItem (replica.Outcome with the
// client's error).
type outcome struct {
	done   bool
	found  bool
	op     *crdt.Op
	before bson.D
	after  bson.D
	err    *mongoError
}

// write hands items to the replica core and returns their outcomes.
func (p *Proxy) write(ctx context.Context, ns string, items []capItem, ordered bool) []outcome {
	in := make([]replica.Item, len(items))
	for i, it := range items {
		in[i] = replica.Item{ID: it.id, Filter: it.filter, Compute: it.compute}
		if it.txn != nil {
			result := it.result
			in[i].Txn, in[i].StmtID = it.txn, it.stmtID
			in[i].Result = func(o replica.Outcome) []byte { return result(toOutcome(o)) }
		}
	}
	res := p.core.Write(ctx, ns, in, ordered)
	out := make([]outcome, len(res))
	for i, o := range res {
		out[i] = toOutcome(o)
	}
	return out
}

// clientError is the client's write error for an outcome's error: the
// front-end's own refusal, or the core's.
func clientError(err error) *mongoError {
	var me *mongoError
	if errors.As(err, &me) {
		return me
	}
	var re *replica.Error
	if errors.As(err, &re) {
		return fromReplica(re)
	}
	return errorf(codeInternalError, "edgenode: %v", err)
}

func fromReplica(e *replica.Error) *mongoError {
	return &mongoError{Code: e.Code, Msg: e.Msg, retryable: e.Code == replica.CodeNotWritablePrimary}
}
