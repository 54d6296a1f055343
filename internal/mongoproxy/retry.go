package mongoproxy

import (
	"bytes"
	"context"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/replica"
)

// Retryable writes, as MongoDB's retryable-writes specification has the
// server keep them: a captured write that carries lsid and txnNumber runs
// holding its session's turn (replica.Txn); each statement already
// recorded for that txnNumber is answered from its record instead of being
// run, and each statement run records its result with its op, in the same
// op log transaction. Statement ids are the client's stmtIds, or the
// statements' positions; findAndModify is statement 0.
//
// The records are this node's business and stay in its op log file: they
// never travel with the ops (a driver retries on the server it used, and
// the ops themselves are idempotent at peers by origin and seq), so no
// client's session id leaves the node, and the proxy's own writes to the
// database carry the proxy's own sessions, never the client's lsid or
// txnNumber (captured writes are new commands the core builds).

// codeInvalidOptions is MongoDB's error for a retryable write it cannot
// retry (multi:true, limit:0).
const codeInvalidOptions int32 = 72

// retryCtx is a retryable write command's session turn and statement ids.
type retryCtx struct {
	txn *replica.Txn
	ids []int32 // the client's stmtIds (nil: by position)
}

// id is statement i's stmtId.
func (rt *retryCtx) id(i int) int32 {
	if rt.ids != nil {
		return rt.ids[i]
	}
	return int32(i)
}

// recorded returns statement i's recorded result (nil: run it). A nil rt
// is a write that is not retryable.
func (rt *retryCtx) recorded(i int) ([]byte, *mongoError) {
	if rt == nil {
		return nil, nil
	}
	rec, err := rt.txn.Recorded(rt.id(i))
	if err != nil {
		return nil, clientError(err)
	}
	return rec, nil
}

// mark makes item a retryable statement (no-op for a nil rt): result
// computes what is recorded from its outcome.
func (rt *retryCtx) mark(it *capItem, i int, result func(outcome) []byte) {
	if rt == nil {
		return
	}
	it.txn, it.stmtID, it.result = rt.txn, rt.id(i), result
}

// record records statement i's result for a statement that logged no op
// (it matched nothing).
func (rt *retryCtx) record(ctx context.Context, i int, result []byte) *mongoError {
	if rt == nil {
		return nil
	}
	if err := rt.txn.Record(ctx, []replica.StmtResult{{ID: rt.id(i), Result: result}}); err != nil {
		return errorf(codeInternalError, "edgenode: %v", err)
	}
	return nil
}

// beginRetry takes the session turn of a write command that carries a
// txnNumber (nil, nil: it carries none). done gives it back.
func (p *Proxy) beginRetry(ctx context.Context, cmd *command, w writeCmd, c *clientConn) (*retryCtx, *mongoError) {
	tv, err := cmd.body.LookupErr("txnNumber")
	if err != nil {
		return nil, nil
	}
	txn, ok := tv.AsInt64OK()
	if !ok || tv.Type == bson.TypeDouble || txn < 0 {
		return nil, errorf(codeTypeMismatch, "txnNumber must be a non-negative integer, got %s", tv)
	}
	lsid, err := cmd.body.LookupErr("lsid")
	if err != nil || lsid.Type != bson.TypeEmbeddedDocument {
		return nil, errorf(codeInvalidOptions, "Transaction number requires a session ID to also be specified")
	}
	n, e := retryStatements(cmd, w)
	if e != nil {
		return nil, e
	}
	rt := &retryCtx{}
	if v, err := cmd.body.LookupErr("stmtIds"); err == nil {
		if rt.ids, e = stmtIDs(v, n); e != nil {
			return nil, e
		}
	}
	// A session belongs to its user, as in MongoDB (whose lsid carries the
	// user's digest): with authentication, the records are keyed by the
	// lsid and the authenticated users together, so a client that learned
	// another's session id can neither read its recorded replies nor make
	// its statements look done. authorize asked for the privileges first.
	key := lsid.Value
	if c != nil && c.privs != nil {
		key = append(append(bytes.Clone(lsid.Value), 0), c.privs.users...)
	}
	rt.txn, err = p.core.BeginTxn(ctx, key, txn)
	if err != nil {
		return nil, clientError(err)
	}
	return rt, nil
}

// retryStatements counts a retryable command's statements and refuses the
// ones MongoDB does not retry (multi:true updates, limit:0 deletes).
func retryStatements(cmd *command, w writeCmd) (int, *mongoError) {
	switch c := w.(type) {
	case *insertCmd:
		docs, _ := cmd.array("documents")
		return len(docs), nil
	case *updateCmd:
		for _, s := range c.stmts {
			if s.err == nil && s.multi {
				return 0, errorf(codeInvalidOptions, "Cannot use (or request) retryable writes with multi=true")
			}
		}
		return len(c.stmts), nil
	case *deleteCmd:
		for _, s := range c.stmts {
			if s.err == nil && s.limit == 0 {
				return 0, errorf(codeInvalidOptions, "Cannot use (or request) retryable writes with limit=0")
			}
		}
		return len(c.stmts), nil
	}
	return 1, nil
}

// stmtIDs reads the client's stmtIds: one int32 per statement.
func stmtIDs(v bson.RawValue, n int) ([]int32, *mongoError) {
	if v.Type != bson.TypeArray {
		return nil, errorf(codeTypeMismatch, "stmtIds must be an array, got %s", v.Type)
	}
	vals, err := bson.Raw(v.Value).Values()
	if err != nil {
		return nil, errorf(codeFailedToParse, "stmtIds: %v", err)
	}
	if len(vals) != n {
		return nil, errorf(codeInvalidLength, "stmtIds has %d elements for %d statements", len(vals), n)
	}
	ids := make([]int32, n)
	for i, x := range vals {
		if x.Type != bson.TypeInt32 {
			return nil, errorf(codeTypeMismatch, "stmtIds.%d must be an int, got %s", i, x.Type)
		}
		ids[i] = x.Int32()
	}
	return ids, nil
}

// A statement's recorded result, for insert, update and delete: {n,
// m (nModified), u (the upserted _id)}. findAndModify records its whole
// reply, so that a retry returns the same value document.

func stmtResult(n, nModified int, upsertedID bson.RawValue) []byte {
	idx, b := bsoncore.AppendDocumentStart(nil)
	b = bsoncore.AppendInt32Element(b, "n", int32(n))
	b = bsoncore.AppendInt32Element(b, "m", int32(nModified))
	if upsertedID.Type != 0 {
		b = bsoncore.AppendValueElement(b, "u", bsoncore.Value{Type: bsoncore.Type(upsertedID.Type), Data: upsertedID.Value})
	}
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}

// addRecorded counts statement i's recorded result in res.
func addRecorded(res *writeResult, i int, rec []byte) {
	d := bson.Raw(rec)
	n, _ := d.Lookup("n").Int32OK()
	m, _ := d.Lookup("m").Int32OK()
	res.N += int(n)
	res.NModified += int(m)
	if u := d.Lookup("u"); u.Type != 0 {
		res.Upserted = append(res.Upserted, upserted{Index: i, ID: u})
	}
}

// updateCounts is what one document outcome of an update statement counts:
// n, nModified and the _id it upserted.
func updateCounts(o outcome, id bson.RawValue) (n, nModified int, up bson.RawValue) {
	switch {
	case !o.done || o.err != nil:
	case o.op != nil && o.before == nil:
		return 1, 0, id
	case o.found:
		if o.op != nil && !docEqual(o.before, o.after) {
			return 1, 1, up
		}
		return 1, 0, up
	}
	return 0, 0, up
}

// toOutcome is the front-end's view of a core outcome.
func toOutcome(o replica.Outcome) outcome {
	out := outcome{done: o.Done, found: o.Found, op: o.Op, before: o.Before, after: o.After}
	if o.Err != nil {
		out.err = clientError(o.Err)
	}
	return out
}
