package mongoproxy

import (
	"bytes"
	"context"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// The parse stage of a captured write: the command is decoded once, here,
// into a typed value (insertCmd, updateCmd, deleteCmd, famCmd) that
// capture.go runs through the replica core; nothing after this stage
// reads the command's BSON again (filters and documents go on as the
// values the database and the merge take; an upsert that creates a
// document derives its fields from the filter's equalities then, as
// MongoDB does).
//
// Decoding never fails as such: a malformed command, or statement, keeps
// its error, which is answered where the handlers always answered it
// (after the privilege check and the write gate, in statement order).

// writeCmd is a decoded captured write command.
type writeCmd interface {
	// actions are the privileges it needs on its namespace, as MongoDB
	// requires them: an upsert also needs insert, and findAndModify
	// (which returns the document) find.
	actions() []string
	// run performs it through the replica core and returns the reply
	// body; rt is its session turn when it is a retryable write (nil:
	// not one).
	run(ctx context.Context, p *Proxy, rt *retryCtx) []byte
}

// parseWrite decodes an insert, update, delete or findAndModify.
func parseWrite(cmd *command, lower string) writeCmd {
	switch lower {
	case "insert":
		return parseInsert(cmd)
	case "update":
		return parseUpdateCmd(cmd)
	case "delete":
		return parseDelete(cmd)
	default:
		return parseFindAndModify(cmd)
	}
}

// insertCmd is an insert.
type insertCmd struct {
	ns      string
	ordered bool
	err     *mongoError // the command is malformed
	// docs are the documents, prepared, up to the first refused one if
	// the insert is ordered (it stops there).
	docs []insertDoc
}

type insertDoc struct {
	stmt int
	doc  bson.Raw
	id   bson.RawValue
	err  *mongoError
}

func parseInsert(cmd *command) *insertCmd {
	c := &insertCmd{ns: cmd.ns(), ordered: boolField(cmd.body, "ordered", true)}
	docs, merr := cmd.array("documents")
	if merr != nil {
		c.err = merr
		return c
	}
	for i, d := range docs {
		doc, id, e := prepareInsert(d)
		c.docs = append(c.docs, insertDoc{stmt: i, doc: doc, id: id, err: e})
		if e != nil && c.ordered {
			break
		}
	}
	return c
}

func (c *insertCmd) actions() []string { return []string{actInsert} }

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

// updateCmd is an update.
type updateCmd struct {
	ns      string
	ordered bool
	let     bson.RawValue
	err     *mongoError // the command is malformed
	stmts   []*updateStmt
}

// updateStmt is one parsed update statement (also findAndModify's).
type updateStmt struct {
	err       *mongoError // the statement is malformed or refused
	q         bson.Raw
	spec      *updateSpec // nil: findAndModify's remove
	upsert    bool
	multi     bool
	sort      bson.RawValue
	hint      bson.RawValue
	collation bson.RawValue
}

func parseUpdateCmd(cmd *command) *updateCmd {
	c := &updateCmd{ns: cmd.ns(), ordered: boolField(cmd.body, "ordered", true), let: cmd.body.Lookup("let")}
	stmts, merr := cmd.array("updates")
	if merr != nil {
		c.err = merr
		return c
	}
	for _, d := range stmts {
		c.stmts = append(c.stmts, parseUpdateStmt(c.ns, d))
	}
	return c
}

func (c *updateCmd) actions() []string {
	acts := []string{actUpdate}
	for _, s := range c.stmts {
		if s.upsert {
			return append(acts, actInsert)
		}
	}
	return acts
}

// parseUpdateStmt decodes one statement of an update; upsert is read even
// from a statement that is otherwise refused (the privileges asked for
// depend on it).
func parseUpdateStmt(ns string, d bson.Raw) *updateStmt {
	s := &updateStmt{upsert: boolField(d, "upsert", false)}
	q, e := docField(d, "q")
	if e != nil {
		s.err = e
		return s
	}
	if q == nil {
		s.err = errorf(codeFailedToParse, "BSON field 'update.updates.q' is missing but a required field")
		return s
	}
	u, err := d.LookupErr("u")
	if err != nil {
		s.err = errorf(codeFailedToParse, "BSON field 'update.updates.u' is missing but a required field")
		return s
	}
	if af, err := d.LookupErr("arrayFilters"); err == nil && af.Type != bson.TypeNull {
		s.err = refuse(ns, "arrayFilters")
		return s
	}
	if s.spec, s.err = parseUpdate(ns, u); s.err != nil {
		return s
	}
	s.q, s.multi = q, boolField(d, "multi", false)
	s.sort, s.hint, s.collation = d.Lookup("sort"), d.Lookup("hint"), d.Lookup("collation")
	return s
}

// deleteCmd is a delete.
type deleteCmd struct {
	ns      string
	ordered bool
	let     bson.RawValue
	err     *mongoError // the command is malformed
	stmts   []*deleteStmt
}

type deleteStmt struct {
	err       *mongoError
	q         bson.Raw
	limit     int64 // 0: every match
	hint      bson.RawValue
	collation bson.RawValue
}

func parseDelete(cmd *command) *deleteCmd {
	c := &deleteCmd{ns: cmd.ns(), ordered: boolField(cmd.body, "ordered", true), let: cmd.body.Lookup("let")}
	stmts, merr := cmd.array("deletes")
	if merr != nil {
		c.err = merr
		return c
	}
	for _, d := range stmts {
		s := &deleteStmt{hint: d.Lookup("hint"), collation: d.Lookup("collation")}
		s.q, s.err = docField(d, "q")
		if s.err == nil && s.q == nil {
			s.err = errorf(codeFailedToParse, "BSON field 'delete.deletes.q' is missing but a required field")
		}
		if v := d.Lookup("limit"); v.Type != 0 {
			if n, ok := v.AsInt64OK(); ok {
				s.limit = n
			}
		}
		c.stmts = append(c.stmts, s)
	}
	return c
}

func (c *deleteCmd) actions() []string { return []string{actRemove} }

// famCmd is a findAndModify.
type famCmd struct {
	ns        string
	err       *mongoError // the command is malformed or refused
	remove    bool
	upsert    bool
	returnNew bool
	fields    bson.Raw // projection of the value returned (nil: whole document)
	stmt      *updateStmt
	hasSort   bool
	let       bson.RawValue
}

func parseFindAndModify(cmd *command) *famCmd {
	body := cmd.body
	c := &famCmd{ns: cmd.ns(), remove: boolField(body, "remove", false), upsert: boolField(body, "upsert", false),
		returnNew: boolField(body, "new", false), let: body.Lookup("let")}
	c.err = c.parse(body)
	return c
}

// parse decodes the command's arguments, checked in MongoDB's order.
func (c *famCmd) parse(body bson.Raw) *mongoError {
	query, e := docField(body, "query")
	if e != nil {
		return e
	}
	if query == nil {
		query = bson.Raw(bsoncore.NewDocumentBuilder().Build())
	}
	if c.fields, e = docField(body, "fields"); e != nil {
		return e
	}
	u, hasUpdate := body.Lookup("update"), body.Lookup("update").Type != 0
	switch {
	case c.remove && hasUpdate:
		return errorf(codeFailedToParse, "Cannot specify both an update and remove=true")
	case !c.remove && !hasUpdate:
		return errorf(codeFailedToParse, "Either an update or remove=true must be specified")
	case c.remove && c.upsert:
		return errorf(codeFailedToParse, "Cannot specify both upsert=true and remove=true")
	case c.remove && c.returnNew:
		return errorf(codeFailedToParse, "Cannot specify both new=true and remove=true; 'remove' always returns the deleted document")
	}
	if af, err := body.LookupErr("arrayFilters"); err == nil && af.Type != bson.TypeNull {
		return refuse(c.ns, "arrayFilters")
	}
	if c.fields != nil {
		if _, e := project(nil, c.fields); e != nil {
			return e
		}
	}
	c.stmt = &updateStmt{q: query, upsert: c.upsert, sort: body.Lookup("sort"), hint: body.Lookup("hint"), collation: body.Lookup("collation")}
	if hasUpdate {
		if c.stmt.spec, e = parseUpdate(c.ns, u); e != nil {
			return e
		}
	}
	c.hasSort = c.stmt.sort.Type == bson.TypeEmbeddedDocument && len(c.stmt.sort.Value) > 5
	return nil
}

func (c *famCmd) actions() []string {
	acts := []string{actFind}
	if c.remove {
		acts = append(acts, actRemove)
	} else {
		acts = append(acts, actUpdate)
	}
	if c.upsert {
		acts = append(acts, actInsert)
	}
	return acts
}
