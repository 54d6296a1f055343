package mongoproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
	"github.com/edgenode/edgenode/internal/replica"
)

// dispatched is what to do with one client command.
type dispatched struct {
	reply   []byte // answer the client with this body (nothing goes upstream)
	rewrite []byte // forward with this body instead of the original
	filter  replyFilter
	// purgeAfter: drop the replica core's document cache once the
	// upstream has answered.
	purgeAfter bool
	// after, when set, runs once the forwarded command is done, with the
	// reply body (nil when there was none or it failed); it must run
	// whatever happened (it releases what dispatch took).
	after func(reply bson.Raw)
	// closeErr: the client's connection must close (its upstream
	// connection broke while the proxy used it).
	closeErr error
}

// authSucceeded reports whether an authentication reply completed a
// successful conversation: ok:1 with done:true (SASL), ok:1 for the legacy
// authenticate command, or a hello whose speculativeAuthenticate is done.
func authSucceeded(cmd string, reply bson.Raw) bool {
	if ok, _ := reply.Lookup("ok").AsFloat64OK(); ok != 1 {
		return false
	}
	switch cmd {
	case "authenticate":
		return true
	case "hello", "ismaster":
		sa, err := reply.LookupErr("speculativeAuthenticate")
		if err != nil || sa.Type != bson.TypeEmbeddedDocument {
			return false
		}
		reply = bson.Raw(sa.Value)
		if d, err := reply.LookupErr("done"); err != nil {
			// MONGODB-X509 answers with just the user.
			return reply.Lookup("dbname").Type == bson.TypeString
		} else {
			return d.Type == bson.TypeBoolean && d.Boolean()
		}
	default:
		d := reply.Lookup("done")
		return d.Type == bson.TypeBoolean && d.Boolean()
	}
}

// writeActions are the privileges a captured write command needs on its
// namespace, as MongoDB requires them: an upsert also needs insert, and
// findAndModify (which returns the document) find.
func writeActions(lower string, cmd *command) []string {
	switch lower {
	case "insert":
		return []string{actInsert}
	case "update":
		acts := []string{actUpdate}
		stmts, _ := cmd.array("updates")
		for _, d := range stmts {
			if boolField(d, "upsert", false) {
				return append(acts, actInsert)
			}
		}
		return acts
	case "delete":
		return []string{actRemove}
	default: // findandmodify
		acts := []string{actFind}
		if boolField(cmd.body, "remove", false) {
			acts = append(acts, actRemove)
		} else {
			acts = append(acts, actUpdate)
		}
		if boolField(cmd.body, "upsert", false) {
			acts = append(acts, actInsert)
		}
		return acts
	}
}

// dispatch routes a command from connection c: captured writes on
// replicated namespaces are handled here; refusals are answered here;
// everything else is forwarded (with the handshake's compression offer
// removed).
func (p *Proxy) dispatch(ctx context.Context, cmd *command, lower string, c *clientConn) dispatched {
	name := cmd.name
	if !c.internal {
		if e := checkNamespaces(cmd, lower); e != nil {
			return p.refused(e)
		}
	}
	switch lower {
	case "hello", "ismaster":
		p.met.commands.WithLabelValues("forwarded").Inc()
		var d dispatched
		if b, changed := removeTopLevel(cmd.body, "compression"); changed {
			d.rewrite = b
		}
		return d
	case "drop", "dropdatabase", "create", "createindexes", "dropindexes":
		if d, ok := p.dispatchDDL(ctx, cmd, lower, c); ok {
			return d
		}
		// Not replicated: forwarded. Cached documents of dropped
		// collections must not outlive them.
		p.met.commands.WithLabelValues("forwarded").Inc()
		return dispatched{purgeAfter: lower == "drop" || lower == "dropdatabase"}
	case "listdatabases":
		p.met.commands.WithLabelValues("forwarded").Inc()
		hide := []string{metaDB}
		if !c.internal {
			hide = append(hide, reservedDB)
		}
		return dispatched{filter: replyFilter{hideDBs: hide}}
	case "insert", "update", "delete", "findandmodify":
		if cmd.db == metaDB {
			return p.refused(metaWriteError())
		}
		if !p.ns.replicated(cmd.db, cmd.coll) {
			break
		}
		if transactional(cmd.body) {
			return p.refused(refuse(cmd.ns(), "a multi-document transaction"))
		}
		// The proxy writes with its own credentials: only for a client the
		// database authenticated, with the privileges the write needs.
		if e, err := c.authorize(name, cmd.db, cmd.coll, writeActions(lower, cmd)...); err != nil {
			return dispatched{closeErr: err}
		} else if e != nil {
			return p.refused(e)
		}
		done, err := p.core.Admit()
		if err != nil {
			return p.refused(admitError(err))
		}
		defer done()
		p.met.commands.WithLabelValues("captured").Inc()
		// Bounded so a stuck database cannot hold a document's lock forever.
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		start := time.Now()
		defer func() { p.met.writeSeconds.Observe(time.Since(start).Seconds()) }()
		var body []byte
		switch lower {
		case "insert":
			body = p.handleInsert(ctx, cmd)
		case "update":
			body = p.handleUpdate(ctx, cmd)
		case "delete":
			body = p.handleDelete(ctx, cmd)
		default:
			body = p.handleFindAndModify(ctx, cmd)
		}
		return dispatched{reply: body}
	case "aggregate":
		if e := p.checkAggregateOut(cmd); e != nil {
			return p.refused(e)
		}
		if !c.internal && cmd.db == "admin" {
			if b := hideReservedChanges(cmd.body); b != nil {
				p.met.commands.WithLabelValues("forwarded").Inc()
				return dispatched{rewrite: b}
			}
		}
	case "bulkwrite":
		if e := p.checkBulkWrite(cmd); e != nil {
			return p.refused(e)
		}
	case "renamecollection":
		for _, key := range []string{name, "to"} {
			if v, err := cmd.body.LookupErr(key); err == nil && v.Type == bson.TypeString {
				db, coll := splitNS(v.StringValue())
				if p.ns.replicated(db, coll) {
					return p.refused(refuse(v.StringValue(), "renameCollection"))
				}
			}
		}
	case "mapreduce":
		if out, err := cmd.body.LookupErr("out"); err == nil {
			inline := out.Type == bson.TypeEmbeddedDocument && bson.Raw(out.Value).Lookup("inline").Type != 0
			if !inline && p.ns.replicated(cmd.db, cmd.coll) {
				return p.refused(refuse(cmd.ns(), "mapReduce with an output collection"))
			}
		}
	}
	if cmd.coll != "" && transactional(cmd.body) && p.ns.replicated(cmd.db, cmd.coll) {
		return p.refused(refuse(cmd.ns(), "a multi-document transaction"))
	}
	p.met.commands.WithLabelValues("forwarded").Inc()
	return dispatched{}
}

func (p *Proxy) refused(e *mongoError) dispatched {
	p.met.commands.WithLabelValues("refused").Inc()
	return dispatched{reply: errorReply(e)}
}

// checkAggregateOut refuses $out/$merge into a replicated collection: those
// writes would bypass capture.
func (p *Proxy) checkAggregateOut(cmd *command) *mongoError {
	pl, err := cmd.body.LookupErr("pipeline")
	if err != nil || pl.Type != bson.TypeArray {
		return nil
	}
	stages, _ := bson.Raw(pl.Value).Values()
	for _, st := range stages {
		if st.Type != bson.TypeEmbeddedDocument {
			continue
		}
		first, err := bson.Raw(st.Value).IndexErr(0)
		if err != nil {
			continue
		}
		op := first.Key()
		if op != "$out" && op != "$merge" {
			continue
		}
		db, coll := cmd.db, ""
		v := first.Value()
		switch v.Type {
		case bson.TypeString:
			coll = v.StringValue()
		case bson.TypeEmbeddedDocument:
			target := bson.Raw(v.Value)
			if op == "$merge" {
				if into := target.Lookup("into"); into.Type == bson.TypeString {
					coll = into.StringValue()
				} else if into.Type == bson.TypeEmbeddedDocument {
					target = bson.Raw(into.Value)
				}
			}
			if coll == "" {
				if d := target.Lookup("db"); d.Type == bson.TypeString {
					db = d.StringValue()
				}
				if c := target.Lookup("coll"); c.Type == bson.TypeString {
					coll = c.StringValue()
				}
			}
		}
		if p.ns.replicated(db, coll) {
			return refuse(db+"."+coll, "an aggregation "+op+" stage writing to it")
		}
	}
	return nil
}

// checkBulkWrite refuses the MongoDB 8 bulkWrite command when it names a
// replicated namespace.
func (p *Proxy) checkBulkWrite(cmd *command) *mongoError {
	infos, _ := cmd.array("nsInfo")
	for _, d := range infos {
		if v := d.Lookup("ns"); v.Type == bson.TypeString {
			db, coll := splitNS(v.StringValue())
			if p.ns.replicated(db, coll) {
				return refuse(v.StringValue(), "the bulkWrite command (use insert/update/delete)")
			}
		}
	}
	return nil
}

func rawValue(v any) bson.RawValue {
	t, b, err := bson.MarshalValue(v)
	if err != nil {
		panic(err)
	}
	return bson.RawValue{Type: t, Value: b}
}

func (p *Proxy) handleInsert(ctx context.Context, cmd *command) []byte {
	docs, merr := cmd.array("documents")
	if merr != nil {
		return errorReply(merr)
	}
	ns := cmd.ns()
	ordered := boolField(cmd.body, "ordered", true)
	res := &writeResult{}
	items := make([]capItem, 0, len(docs))
	var pre []writeError
	for i, d := range docs {
		doc, id, e := prepareInsert(d)
		if e != nil {
			pre = append(pre, writeError{Index: i, Err: e})
			if ordered {
				break
			}
			continue
		}
		idv := id
		items = append(items, capItem{stmt: i, id: id, compute: func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, *mongoError) {
			if found {
				return nil, errorf(codeDuplicateKey, "E11000 duplicate key error collection: %s index: _id_ dup key: { _id: %s }", ns, idv.String())
			}
			return &crdt.Op{Kind: crdt.Insert, Doc: doc}, nil
		}})
	}
	// With ordered inserts a bad document stops the batch at its index:
	// only the documents before it run.
	if ordered && len(pre) > 0 {
		cut := 0
		for cut < len(items) && items[cut].stmt < pre[0].Index {
			cut++
		}
		items = items[:cut]
	}
	outs := p.write(ctx, ns, items, ordered)
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

// prepareInsert validates a document for insertion and gives it an _id
// (a new ObjectId, first, as drivers and mongod do) when it has none.
func prepareInsert(d bson.Raw) (bson.Raw, bson.RawValue, *mongoError) {
	elems, err := d.Elements()
	if err != nil {
		return nil, bson.RawValue{}, errorf(codeFailedToParse, "document: %v", err)
	}
	var id bson.RawValue
	for _, e := range elems {
		k := e.Key()
		switch {
		case k == "_id":
			id = e.Value()
		case k == crdt.MetaField:
			return nil, id, errorf(codeBadValue, "the field %s is reserved by edgenode and cannot be written", crdt.MetaField)
		case strings.HasPrefix(k, "$"):
			return nil, id, errorf(codeBadValue, "invalid key: %q (key must not start with '$' sign)", k)
		case strings.Contains(k, "."):
			return nil, id, errorf(codeBadValue, "invalid key: %q (field names containing '.' are not supported on replicated collections)", k)
		case k == "":
			return nil, id, errorf(codeBadValue, "invalid key: empty field name")
		}
		if v := e.Value(); v.Type == bson.TypeEmbeddedDocument || v.Type == bson.TypeArray {
			if bytes.Contains(v.Value, metaFieldBytes) {
				if _, changed := wire.StripField(v.Value, crdt.MetaField); changed {
					return nil, id, errorf(codeBadValue, "the field name %s is reserved by edgenode and cannot be written, at any depth", crdt.MetaField)
				}
			}
		}
	}
	switch id.Type {
	case 0:
		id = rawValue(bson.NewObjectID())
		idx, b := bsoncore.AppendDocumentStart(nil)
		b = bsoncore.AppendValueElement(b, "_id", bsoncore.Value{Type: bsoncore.Type(id.Type), Data: id.Value})
		for _, e := range elems {
			b = append(b, e...)
		}
		b, _ = bsoncore.AppendDocumentEnd(b, idx)
		d = b
	case bson.TypeArray, bson.TypeRegex, bson.TypeUndefined:
		return nil, id, errorf(codeInvalidIDField, "The '_id' value cannot be of type %s", id.Type)
	}
	return d, id, nil
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

// updateStmt is one parsed update statement.
type updateStmt struct {
	q         bson.Raw
	spec      *updateSpec
	upsert    bool
	multi     bool
	sort      bson.RawValue
	hint      bson.RawValue
	collation bson.RawValue
}

func parseUpdateStmt(ns string, d bson.Raw) (*updateStmt, *mongoError) {
	q, e := docField(d, "q")
	if e != nil {
		return nil, e
	}
	if q == nil {
		return nil, errorf(codeFailedToParse, "BSON field 'update.updates.q' is missing but a required field")
	}
	u, err := d.LookupErr("u")
	if err != nil {
		return nil, errorf(codeFailedToParse, "BSON field 'update.updates.u' is missing but a required field")
	}
	if af, err := d.LookupErr("arrayFilters"); err == nil && af.Type != bson.TypeNull {
		return nil, refuse(ns, "arrayFilters")
	}
	spec, e := parseUpdate(ns, u)
	if e != nil {
		return nil, e
	}
	return &updateStmt{q: q, spec: spec, upsert: boolField(d, "upsert", false), multi: boolField(d, "multi", false),
		sort: d.Lookup("sort"), hint: d.Lookup("hint"), collation: d.Lookup("collation")}, nil
}

// updateItems turns a statement into document items: the _id of a plain
// _id filter, else the _ids the filter matches now; with upsert and no
// match, one item that creates the document.
func (p *Proxy) updateItems(ctx context.Context, ns string, stmt int, s *updateStmt, let bson.RawValue, compute func(upsertOnly bool) func(crdt.State, bool, crdt.Timestamp) (*crdt.Op, *mongoError)) ([]capItem, *mongoError) {
	if id, ok := idOnlyFilter(s.q); ok {
		return []capItem{{stmt: stmt, id: id, compute: compute(false)}}, nil
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
		items = append(items, capItem{stmt: stmt, id: id, filter: s.q, compute: compute(false)})
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
		items = append(items, capItem{stmt: stmt, id: id, compute: compute(true)})
	}
	return items, nil
}

// updateCompute returns the function deciding the op of an update statement
// for one document.
func updateCompute(ns string, s *updateStmt, upsertOnly bool) func(crdt.State, bool, crdt.Timestamp) (*crdt.Op, *mongoError) {
	return func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, *mongoError) {
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

func (p *Proxy) handleUpdate(ctx context.Context, cmd *command) []byte {
	stmts, merr := cmd.array("updates")
	if merr != nil {
		return errorReply(merr)
	}
	ns := cmd.ns()
	ordered := boolField(cmd.body, "ordered", true)
	let := cmd.body.Lookup("let")
	res := &writeResult{isUpdate: true}
	for i, d := range stmts {
		s, e := parseUpdateStmt(ns, d)
		if e == nil {
			var items []capItem
			items, e = p.updateItems(ctx, ns, i, s, let, func(upsertOnly bool) func(crdt.State, bool, crdt.Timestamp) (*crdt.Op, *mongoError) {
				return updateCompute(ns, s, upsertOnly)
			})
			if e == nil {
				outs := p.write(ctx, ns, items, true)
				for j, o := range outs {
					switch {
					case !o.done:
					case o.err != nil:
						e = o.err
					case o.op != nil && o.before == nil:
						res.N++
						res.Upserted = append(res.Upserted, upserted{Index: i, ID: items[j].id})
					case o.found:
						res.N++
						if o.op != nil && !docEqual(o.before, o.after) {
							res.NModified++
						}
					}
				}
			}
		}
		if e != nil {
			res.Errors = append(res.Errors, writeError{Index: i, Err: e})
			if ordered {
				break
			}
		}
	}
	return res.reply()
}

func docEqual(a, b bson.D) bool {
	ab, err1 := bson.Marshal(a)
	bb, err2 := bson.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ab, bb)
}

func (p *Proxy) handleDelete(ctx context.Context, cmd *command) []byte {
	stmts, merr := cmd.array("deletes")
	if merr != nil {
		return errorReply(merr)
	}
	ns := cmd.ns()
	ordered := boolField(cmd.body, "ordered", true)
	let := cmd.body.Lookup("let")
	res := &writeResult{}
	compute := func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, *mongoError) {
		if !found {
			return nil, nil
		}
		return &crdt.Op{Kind: crdt.Delete}, nil
	}
	for i, d := range stmts {
		var e *mongoError
		q, e := docField(d, "q")
		if e == nil && q == nil {
			e = errorf(codeFailedToParse, "BSON field 'delete.deletes.q' is missing but a required field")
		}
		if e == nil {
			limit := int64(0)
			if v := d.Lookup("limit"); v.Type != 0 {
				if n, ok := v.AsInt64OK(); ok {
					limit = n
				}
			}
			var items []capItem
			if id, ok := idOnlyFilter(q); ok {
				items = []capItem{{stmt: i, id: id, compute: compute}}
			} else {
				ids, err := p.resolveIDs(ctx, ns, q, limit, bson.RawValue{}, d.Lookup("hint"), d.Lookup("collation"), let)
				if err != nil {
					e = fromReplica(replica.DBError(err))
				}
				for _, id := range ids {
					items = append(items, capItem{stmt: i, id: id, filter: q, compute: compute})
				}
			}
			if e == nil {
				outs := p.write(ctx, ns, items, true)
				for _, o := range outs {
					switch {
					case !o.done:
					case o.err != nil:
						e = o.err
					case o.op != nil:
						res.N++
					}
				}
			}
		}
		if e != nil {
			res.Errors = append(res.Errors, writeError{Index: i, Err: e})
			if ordered {
				break
			}
		}
	}
	return res.reply()
}

func (p *Proxy) handleFindAndModify(ctx context.Context, cmd *command) []byte {
	ns := cmd.ns()
	body := cmd.body
	query, e := docField(body, "query")
	if e != nil {
		return errorReply(e)
	}
	if query == nil {
		query = bson.Raw(bsoncore.NewDocumentBuilder().Build())
	}
	fields, e := docField(body, "fields")
	if e != nil {
		return errorReply(e)
	}
	remove := boolField(body, "remove", false)
	upsert := boolField(body, "upsert", false)
	returnNew := boolField(body, "new", false)
	u, hasUpdate := body.Lookup("update"), body.Lookup("update").Type != 0
	switch {
	case remove && hasUpdate:
		return errorReply(errorf(codeFailedToParse, "Cannot specify both an update and remove=true"))
	case !remove && !hasUpdate:
		return errorReply(errorf(codeFailedToParse, "Either an update or remove=true must be specified"))
	case remove && upsert:
		return errorReply(errorf(codeFailedToParse, "Cannot specify both upsert=true and remove=true"))
	case remove && returnNew:
		return errorReply(errorf(codeFailedToParse, "Cannot specify both new=true and remove=true; 'remove' always returns the deleted document"))
	}
	if af, err := body.LookupErr("arrayFilters"); err == nil && af.Type != bson.TypeNull {
		return errorReply(refuse(ns, "arrayFilters"))
	}
	if fields != nil {
		if _, e := project(nil, fields); e != nil {
			return errorReply(e)
		}
	}
	stmt := &updateStmt{q: query, upsert: upsert, sort: body.Lookup("sort"), hint: body.Lookup("hint"), collation: body.Lookup("collation")}
	if hasUpdate {
		spec, e := parseUpdate(ns, u)
		if e != nil {
			return errorReply(e)
		}
		stmt.spec = spec
	}
	hasSort := stmt.sort.Type == bson.TypeEmbeddedDocument && len(stmt.sort.Value) > 5
	var outs []outcome
	var items []capItem
	// A document resolved by the filter may stop matching before its lock is
	// taken (a concurrent write); resolve again a few times, as mongod
	// retries a findAndModify whose document changed under it.
	for attempt := 0; attempt < 5; attempt++ {
		var err *mongoError
		if remove {
			items, err = p.famRemoveItems(ctx, ns, stmt, hasSort, body.Lookup("let"))
		} else {
			items, err = p.updateItems(ctx, ns, 0, stmt, body.Lookup("let"), func(upsertOnly bool) func(crdt.State, bool, crdt.Timestamp) (*crdt.Op, *mongoError) {
				return updateCompute(ns, stmt, upsertOnly)
			})
		}
		if err != nil {
			return errorReply(err)
		}
		outs = p.write(ctx, ns, items, true)
		if len(outs) == 0 || outs[0].found || outs[0].err != nil || items[0].filter == nil {
			break
		}
	}
	idx, b := bsoncore.AppendDocumentStart(nil)
	var value bson.D
	lidx, b2 := bsoncore.AppendDocumentElementStart(b, "lastErrorObject")
	b = b2
	if len(outs) == 1 && outs[0].err != nil {
		return errorReply(outs[0].err)
	}
	if len(outs) == 1 && outs[0].done && (outs[0].found || outs[0].op != nil) {
		o := outs[0]
		b = bsoncore.AppendInt32Element(b, "n", 1)
		if !remove {
			b = bsoncore.AppendBooleanElement(b, "updatedExisting", o.before != nil)
			if o.before == nil {
				id := items[0].id
				b = bsoncore.AppendValueElement(b, "upserted", bsoncore.Value{Type: bsoncore.Type(id.Type), Data: id.Value})
			}
		}
		if remove || !returnNew {
			value = o.before
		} else {
			value = o.after
		}
	} else {
		b = bsoncore.AppendInt32Element(b, "n", 0)
		if !remove {
			b = bsoncore.AppendBooleanElement(b, "updatedExisting", false)
		}
	}
	b, _ = bsoncore.AppendDocumentEnd(b, lidx)
	if value != nil {
		if fields != nil {
			value, _ = project(value, fields)
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

func (p *Proxy) famRemoveItems(ctx context.Context, ns string, s *updateStmt, hasSort bool, let bson.RawValue) ([]capItem, *mongoError) {
	compute := func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, *mongoError) {
		if !found {
			return nil, nil
		}
		return &crdt.Op{Kind: crdt.Delete}, nil
	}
	if id, ok := idOnlyFilter(s.q); ok && !hasSort {
		return []capItem{{id: id, compute: compute}}, nil
	}
	ids, err := p.resolveIDs(ctx, ns, s.q, 1, s.sort, s.hint, s.collation, let)
	if err != nil {
		return nil, fromReplica(replica.DBError(err))
	}
	if len(ids) == 0 {
		return nil, nil
	}
	return []capItem{{id: ids[0], filter: s.q, compute: compute}}, nil
}

// buildUpdate produces the op's normalized update document: only $set,
// $unset, $inc, $min, $max, $addToSet. $currentDate becomes a $set of the
// op's clock time; $setOnInsert and the query's equality fields become $set
// when the upsert creates the document, and are dropped otherwise.
func buildUpdate(s *updateSpec, ts crdt.Timestamp, inserting bool, seed []kv) (bson.Raw, bool, error) {
	var set []kv
	written := s.paths(inserting)
	if inserting {
	seedLoop:
		for _, f := range seed {
			for _, w := range written {
				if f.path == w || strings.HasPrefix(f.path, w+".") || strings.HasPrefix(w, f.path+".") {
					continue seedLoop
				}
			}
			set = append(set, f)
		}
	}
	set = append(set, s.set...)
	if inserting {
		set = append(set, s.setOnInsert...)
	}
	for _, f := range s.currentDate {
		var v bson.RawValue
		if f.val.Type == bson.TypeString && f.val.StringValue() == "timestamp" {
			v = rawValue(bson.Timestamp{T: uint32(ts.Wall / 1000), I: uint32(ts.Wall%1000)<<16 | ts.Logical&0xFFFF})
		} else {
			v = rawValue(bson.DateTime(ts.Wall))
		}
		set = append(set, kv{path: f.path, val: v})
	}
	idx, b := bsoncore.AppendDocumentStart(nil)
	empty := true
	add := func(op string, list []kv, unset bool) {
		if len(list) == 0 {
			return
		}
		empty = false
		var di int32
		di, b = bsoncore.AppendDocumentElementStart(b, op)
		for _, f := range list {
			if unset {
				b = bsoncore.AppendStringElement(b, f.path, "")
				continue
			}
			b = bsoncore.AppendValueElement(b, f.path, bsoncore.Value{Type: bsoncore.Type(f.val.Type), Data: f.val.Value})
		}
		b, _ = bsoncore.AppendDocumentEnd(b, di)
	}
	add("$set", set, false)
	add("$unset", s.unset, true)
	add("$inc", s.inc, false)
	add("$min", s.min, false)
	add("$max", s.max, false)
	add("$addToSet", s.addToSet, false)
	b, err := bsoncore.AppendDocumentEnd(b, idx)
	if err != nil {
		return nil, false, fmt.Errorf("encode update: %w", err)
	}
	if empty {
		// An upsert with nothing but an _id still creates the document.
		b = bsoncore.NewDocumentBuilder().AppendDocument("$set", bsoncore.NewDocumentBuilder().Build()).Build()
	}
	return b, empty, nil
}

// checkApplicable gives the client MongoDB's error where an operator cannot
// apply to the document as it is on this node (the merge would silently
// make it a no-op; at the origin the client deserves the error).
func checkApplicable(doc bson.D, s *updateSpec) *mongoError {
	raw, err := bson.Marshal(doc)
	if err != nil {
		return errorf(codeInternalError, "edgenode: %v", err)
	}
	check := func(op string, list []kv, final func(path string, v bson.RawValue) *mongoError) *mongoError {
		for _, f := range list {
			if e := checkPathOn(bson.Raw(raw), op, f.path, final); e != nil {
				return e
			}
		}
		return nil
	}
	numeric := func(path string, v bson.RawValue) *mongoError {
		switch v.Type {
		case bson.TypeInt32, bson.TypeInt64, bson.TypeDouble:
			return nil
		}
		return errorf(codeTypeMismatch, "Cannot apply $inc to a value of non-numeric type. {_id: %s} has the field '%s' of non-numeric type %s", idOf(raw), path, typeName(v.Type))
	}
	array := func(path string, v bson.RawValue) *mongoError {
		if v.Type == bson.TypeArray {
			return nil
		}
		return errorf(codeBadValue, "Cannot apply $addToSet to non-array field. Field named '%s' has non-array type %s", path, typeName(v.Type))
	}
	for _, c := range []struct {
		op    string
		list  []kv
		final func(string, bson.RawValue) *mongoError
	}{{"$set", s.set, nil}, {"$unset", s.unset, nil}, {"$inc", s.inc, numeric}, {"$min", s.min, nil}, {"$max", s.max, nil},
		{"$addToSet", s.addToSet, array}, {"$currentDate", s.currentDate, nil}} {
		if e := check(c.op, c.list, c.final); e != nil {
			return e
		}
	}
	return nil
}

func idOf(doc bson.Raw) string {
	if v, err := doc.LookupErr("_id"); err == nil {
		return v.String()
	}
	return "?"
}

func typeName(t bson.Type) string {
	switch t {
	case bson.TypeString:
		return "string"
	case bson.TypeEmbeddedDocument:
		return "object"
	case bson.TypeArray:
		return "array"
	case bson.TypeBoolean:
		return "bool"
	case bson.TypeNull:
		return "null"
	}
	return t.String()
}

// checkPathOn walks path in doc: a missing component is fine (the update
// creates it), an array or a scalar in the middle is an error, and final
// judges an existing value at the end.
func checkPathOn(doc bson.Raw, op, path string, final func(string, bson.RawValue) *mongoError) *mongoError {
	comps := strings.Split(path, ".")
	cur := doc
	for i, c := range comps {
		v, err := cur.LookupErr(c)
		if err != nil {
			return nil
		}
		if i == len(comps)-1 {
			if final != nil {
				return final(path, v)
			}
			return nil
		}
		switch v.Type {
		case bson.TypeEmbeddedDocument:
			cur = bson.Raw(v.Value)
		case bson.TypeArray:
			return errorf(codeBadValue, "edgenode: the path '%s' goes through an array; updating array elements is not supported on replicated collections%s", path, localOnlyHint)
		default:
			if op == "$unset" {
				return nil
			}
			return errorf(codePathNotViable, "Cannot create field '%s' in element {%s: %s}", comps[i+1], c, v)
		}
	}
	return nil
}

// capItem is one document-level write of a client command: the statement
// it comes from, and what the replica core needs (replica.Item).
type capItem struct {
	stmt   int
	id     bson.RawValue
	filter bson.Raw // re-checked under the document's lease; nil when the statement names the _id
	// compute decides the op for the document's current state (nil op:
	// nothing to write) or refuses with a write error.
	compute func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, *mongoError)
}

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
		compute := it.compute
		in[i] = replica.Item{ID: it.id, Filter: it.filter, Compute: func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, error) {
			op, e := compute(st, found, ts)
			if e != nil {
				return nil, e
			}
			return op, nil
		}}
	}
	res := p.core.Write(ctx, ns, in, ordered)
	out := make([]outcome, len(res))
	for i, o := range res {
		out[i] = outcome{done: o.Done, found: o.Found, op: o.Op, before: o.Before, after: o.After}
		if o.Err != nil {
			out[i].err = clientError(o.Err)
		}
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

func fromReplica(e *replica.Error) *mongoError { return &mongoError{Code: e.Code, Msg: e.Msg} }
