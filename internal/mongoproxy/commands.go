package mongoproxy

import (
	"fmt"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// command is the parsed envelope of an OP_MSG command: its name (first key),
// target database, the collection when the command's value names one, and
// the document sequences that carried bulk arguments.
type command struct {
	name string
	db   string
	coll string
	body bson.Raw
	seqs []wire.Sequence
}

func parseCommand(m *wire.Msg) (*command, error) {
	body := bson.Raw(m.Body)
	first, err := body.IndexErr(0)
	if err != nil {
		return nil, fmt.Errorf("empty command document")
	}
	c := &command{name: first.Key(), body: body, seqs: m.Sequences}
	if v := first.Value(); v.Type == bson.TypeString {
		c.coll = v.StringValue()
	}
	if v, err := body.LookupErr("$db"); err == nil && v.Type == bson.TypeString {
		c.db = v.StringValue()
	}
	return c, nil
}

func (c *command) ns() string { return c.db + "." + c.coll }

// array returns the documents of a bulk argument, from the body (an array)
// or from a document sequence of that name (drivers use the latter).
func (c *command) array(name string) ([]bson.Raw, *mongoError) {
	var out []bson.Raw
	for _, s := range c.seqs {
		if s.Identifier == name {
			for _, d := range s.Docs {
				out = append(out, bson.Raw(d))
			}
		}
	}
	v, err := c.body.LookupErr(name)
	if err != nil {
		return out, nil
	}
	if out != nil {
		return nil, errorf(codeFailedToParse, "%s is given both in the body and as a document sequence", name)
	}
	if v.Type != bson.TypeArray {
		return nil, errorf(codeTypeMismatch, "%s must be an array, got %s", name, v.Type)
	}
	vals, err := bson.Raw(v.Value).Values()
	if err != nil {
		return nil, errorf(codeFailedToParse, "%s: %v", name, err)
	}
	for i, e := range vals {
		if e.Type != bson.TypeEmbeddedDocument {
			return nil, errorf(codeTypeMismatch, "%s.%d must be a document, got %s", name, i, e.Type)
		}
		out = append(out, bson.Raw(e.Value))
	}
	return out, nil
}

func boolField(d bson.Raw, key string, def bool) bool {
	v, err := d.LookupErr(key)
	if err != nil {
		return def
	}
	switch v.Type {
	case bson.TypeBoolean:
		return v.Boolean()
	case bson.TypeInt32:
		return v.Int32() != 0
	case bson.TypeInt64:
		return v.Int64() != 0
	case bson.TypeDouble:
		return v.Double() != 0
	}
	return def
}

func docField(d bson.Raw, key string) (bson.Raw, *mongoError) {
	v, err := d.LookupErr(key)
	if err != nil || v.Type == bson.TypeNull {
		return nil, nil
	}
	if v.Type != bson.TypeEmbeddedDocument {
		return nil, errorf(codeTypeMismatch, "%s must be a document, got %s", key, v.Type)
	}
	return bson.Raw(v.Value), nil
}

// transactional reports whether a command belongs to a multi-document
// transaction (startTransaction or autocommit:false).
func transactional(body bson.Raw) bool {
	if boolField(body, "startTransaction", false) {
		return true
	}
	if v, err := body.LookupErr("autocommit"); err == nil && v.Type == bson.TypeBoolean && !v.Boolean() {
		return true
	}
	return false
}

// kv is one field path with its operand.
type kv struct {
	path string
	val  bson.RawValue
}

// updateSpec is a validated update document with only converging operators.
type updateSpec struct {
	set, unset, inc, min, max, addToSet, setOnInsert []kv
	currentDate                                      []kv // val: Boolean true => date, String "timestamp"/"date"
	// insertID is $setOnInsert's _id (the id an upsert creates), if given.
	insertID bson.RawValue
}

// refusedOperators are valid MongoDB update operators that do not converge.
var refusedOperators = map[string]bool{
	"$push": true, "$pull": true, "$pop": true, "$pullAll": true, "$rename": true, "$bit": true, "$mul": true,
}

// parseUpdate validates an update argument on a replicated namespace:
// pipelines, replacement documents, non-converging operators, positional
// paths and writes to _id or the hidden field are refused with MongoDB-style
// errors.
func parseUpdate(ns string, u bson.RawValue) (*updateSpec, *mongoError) {
	switch u.Type {
	case bson.TypeArray:
		return nil, refuse(ns, "an aggregation pipeline update")
	case bson.TypeEmbeddedDocument:
	default:
		return nil, errorf(codeFailedToParse, "update must be a document or a pipeline, got %s", u.Type)
	}
	elems, err := bson.Raw(u.Value).Elements()
	if err != nil {
		return nil, errorf(codeFailedToParse, "update document: %v", err)
	}
	if len(elems) == 0 {
		return nil, refuse(ns, "a replacement document (an empty update)")
	}
	plain := 0
	for _, e := range elems {
		if !strings.HasPrefix(e.Key(), "$") {
			plain++
		}
	}
	if plain > 0 {
		if plain == len(elems) {
			return nil, refuse(ns, "a replacement document (an update without operators)")
		}
		return nil, errorf(codeFailedToParse, "Unknown modifier: %s. Expected a valid update modifier or pipeline-style update specified as an array", firstPlain(elems))
	}
	s := &updateSpec{}
	var paths []string
	for _, e := range elems {
		op := e.Key()
		var list *[]kv
		switch op {
		case "$set":
			list = &s.set
		case "$unset":
			list = &s.unset
		case "$inc":
			list = &s.inc
		case "$min":
			list = &s.min
		case "$max":
			list = &s.max
		case "$addToSet":
			list = &s.addToSet
		case "$setOnInsert":
			list = &s.setOnInsert
		case "$currentDate":
			list = &s.currentDate
		default:
			if refusedOperators[op] {
				return nil, refuse(ns, "the update operator "+op)
			}
			return nil, errorf(codeFailedToParse, "Unknown modifier: %s. Expected a valid update modifier or pipeline-style update specified as an array", op)
		}
		v := e.Value()
		if v.Type != bson.TypeEmbeddedDocument {
			return nil, errorf(codeFailedToParse, "Modifiers operate on fields but we found type %s instead. For example: {$mod: {<field>: ...}} not {%s: %s}", v.Type, op, v)
		}
		fields, err := bson.Raw(v.Value).Elements()
		if err != nil {
			return nil, errorf(codeFailedToParse, "%s: %v", op, err)
		}
		if len(fields) == 0 {
			// MongoDB 5+ accepts empty operator documents as no-ops.
			continue
		}
		for _, f := range fields {
			p := f.Key()
			fv := f.Value()
			if p == "_id" && op == "$setOnInsert" {
				s.insertID = fv
				continue
			}
			if e := checkPath(ns, op, p); e != nil {
				return nil, e
			}
			switch op {
			case "$inc":
				switch fv.Type {
				case bson.TypeInt32, bson.TypeInt64, bson.TypeDouble:
				case bson.TypeDecimal128:
					return nil, refuse(ns, "$inc with a decimal128 operand")
				default:
					return nil, errorf(codeTypeMismatch, "Cannot increment with non-numeric argument: {%s: %s}", p, fv)
				}
			case "$currentDate":
				ok := fv.Type == bson.TypeBoolean
				if fv.Type == bson.TypeEmbeddedDocument {
					t, err := bson.Raw(fv.Value).LookupErr("$type")
					if err == nil && t.Type == bson.TypeString && (t.StringValue() == "date" || t.StringValue() == "timestamp") {
						ok = true
						fv = t
					}
				}
				if !ok {
					return nil, errorf(codeBadValue, "%s is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({$type: 'timestamp/date'}).", fv.Type)
				}
			case "$addToSet":
				if fv.Type == bson.TypeEmbeddedDocument {
					if first, err := bson.Raw(fv.Value).IndexErr(0); err == nil && strings.HasPrefix(first.Key(), "$") && first.Key() != "$each" {
						return nil, refuse(ns, "the $addToSet modifier "+first.Key())
					}
				}
			}
			*list = append(*list, kv{path: p, val: fv})
			paths = append(paths, p)
		}
	}
	for i, p := range paths {
		for _, q := range paths[:i] {
			if p == q || strings.HasPrefix(p, q+".") || strings.HasPrefix(q, p+".") {
				return nil, errorf(codeConflictingUpdateOps, "Updating the path '%s' would create a conflict at '%s'", p, shorter(p, q))
			}
		}
	}
	return s, nil
}

func firstPlain(elems []bson.RawElement) string {
	for _, e := range elems {
		if !strings.HasPrefix(e.Key(), "$") {
			return e.Key()
		}
	}
	return ""
}

func shorter(a, b string) string {
	if len(a) < len(b) {
		return a
	}
	return b
}

// checkPath validates one update path.
func checkPath(ns, op, p string) *mongoError {
	if p == "" {
		return errorf(codeBadValue, "An empty update path is not valid.")
	}
	comps := strings.Split(p, ".")
	for _, c := range comps {
		switch {
		case c == "":
			return errorf(codeBadValue, "The update path '%s' contains an empty field name, which is not allowed.", p)
		case c == "$" || strings.HasPrefix(c, "$["):
			return refuse(ns, fmt.Sprintf("the positional operator %s (in %s of '%s')", c, op, p))
		case strings.HasPrefix(c, "$"):
			return errorf(codeBadValue, "The dollar ($) prefixed field '%s' in '%s' is not allowed in the context of an update's replacement document.", c, p)
		}
	}
	switch comps[0] {
	case "_id":
		return errorf(codeImmutableField, "Performing an update on the path '%s' would modify the immutable field '_id'", p)
	case crdt.MetaField:
		return errorf(codeBadValue, "the field %s is reserved by edgenode and cannot be written", crdt.MetaField)
	}
	return nil
}

// paths returns every path the spec writes (not $setOnInsert's _id).
func (s *updateSpec) paths(inserting bool) []string {
	var out []string
	for _, l := range [][]kv{s.set, s.unset, s.inc, s.min, s.max, s.addToSet, s.currentDate} {
		for _, f := range l {
			out = append(out, f.path)
		}
	}
	if inserting {
		for _, f := range s.setOnInsert {
			out = append(out, f.path)
		}
	}
	return out
}

// upsertSeed extracts the equality conditions of a query, the fields an
// upsert copies into the document it creates (MongoDB does the same):
// top-level `field: value` and `field: {$eq: value}` pairs, recursively
// through $and. _id is not part of the seed (it becomes the op's _id).
func upsertSeed(q bson.Raw) (seed []kv, id bson.RawValue) {
	elems, err := q.Elements()
	if err != nil {
		return nil, id
	}
	for _, e := range elems {
		k, v := e.Key(), e.Value()
		if k == "$and" && v.Type == bson.TypeArray {
			vals, _ := bson.Raw(v.Value).Values()
			for _, x := range vals {
				if x.Type == bson.TypeEmbeddedDocument {
					s, i := upsertSeed(bson.Raw(x.Value))
					seed = append(seed, s...)
					if i.Type != 0 {
						id = i
					}
				}
			}
			continue
		}
		if strings.HasPrefix(k, "$") {
			continue
		}
		val, ok := equalityValue(v)
		if !ok {
			continue
		}
		if k == "_id" {
			id = val
			continue
		}
		if strings.HasPrefix(k, "_id.") || k == crdt.MetaField || strings.HasPrefix(k, crdt.MetaField+".") {
			continue
		}
		seed = append(seed, kv{path: k, val: val})
	}
	return seed, id
}

// equalityValue returns v when a query condition `field: v` is a plain
// equality (not an operator document, not a regex).
func equalityValue(v bson.RawValue) (bson.RawValue, bool) {
	switch v.Type {
	case bson.TypeRegex:
		return v, false
	case bson.TypeEmbeddedDocument:
		first, err := bson.Raw(v.Value).IndexErr(0)
		if err != nil || !strings.HasPrefix(first.Key(), "$") {
			return v, true
		}
		if first.Key() == "$eq" {
			if n, _ := bson.Raw(v.Value).Elements(); len(n) == 1 {
				inner := first.Value()
				if inner.Type == bson.TypeRegex {
					return inner, false
				}
				return inner, true
			}
		}
		return v, false
	}
	return v, true
}

// idOnlyFilter returns the _id when q is exactly {_id: v} or {_id: {$eq: v}}
// with v a plain value: such filters need no query to find their document.
func idOnlyFilter(q bson.Raw) (bson.RawValue, bool) {
	elems, err := q.Elements()
	if err != nil || len(elems) != 1 || elems[0].Key() != "_id" {
		return bson.RawValue{}, false
	}
	v, ok := equalityValue(elems[0].Value())
	if !ok {
		return bson.RawValue{}, false
	}
	switch v.Type {
	case bson.TypeArray, bson.TypeUndefined, bson.TypeNull:
		return bson.RawValue{}, false
	}
	return v, true
}
