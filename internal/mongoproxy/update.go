package mongoproxy

import (
	"fmt"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Update documents on replicated namespaces: which operators converge
// (parseUpdate, at parse time), the op's normalized update (buildUpdate)
// and MongoDB's errors for an operator that cannot apply to the document
// as it is here (checkApplicable), both at capture time.

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
	for _, el := range elems {
		ps, merr := s.addOperator(ns, el.Key(), el.Value())
		if merr != nil {
			return nil, merr
		}
		paths = append(paths, ps...)
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

// operands returns the list of the spec that holds op's operands.
func (s *updateSpec) operands(ns, op string) (*[]kv, *mongoError) {
	switch op {
	case "$set":
		return &s.set, nil
	case "$unset":
		return &s.unset, nil
	case "$inc":
		return &s.inc, nil
	case "$min":
		return &s.min, nil
	case "$max":
		return &s.max, nil
	case "$addToSet":
		return &s.addToSet, nil
	case "$setOnInsert":
		return &s.setOnInsert, nil
	case "$currentDate":
		return &s.currentDate, nil
	}
	if refusedOperators[op] {
		return nil, refuse(ns, "the update operator "+op)
	}
	return nil, errorf(codeFailedToParse, "Unknown modifier: %s. Expected a valid update modifier or pipeline-style update specified as an array", op)
}

// addOperator adds one operator's fields ({op: v}) to the spec and
// returns the paths it writes.
func (s *updateSpec) addOperator(ns, op string, v bson.RawValue) ([]string, *mongoError) {
	list, e := s.operands(ns, op)
	if e != nil {
		return nil, e
	}
	if v.Type != bson.TypeEmbeddedDocument {
		return nil, errorf(codeFailedToParse, "Modifiers operate on fields but we found type %s instead. For example: {$mod: {<field>: ...}} not {%s: %s}", v.Type, op, v)
	}
	fields, err := bson.Raw(v.Value).Elements()
	if err != nil {
		return nil, errorf(codeFailedToParse, "%s: %v", op, err)
	}
	// MongoDB 5+ accepts empty operator documents as no-ops.
	var paths []string
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
		fv, e := checkOperand(ns, op, p, fv)
		if e != nil {
			return nil, e
		}
		*list = append(*list, kv{path: p, val: fv})
		paths = append(paths, p)
	}
	return paths, nil
}

// checkOperand validates the operand of $inc, $currentDate and $addToSet
// (the value to keep for $currentDate is its type name).
func checkOperand(ns, op, p string, fv bson.RawValue) (bson.RawValue, *mongoError) {
	switch op {
	case "$inc":
		switch fv.Type {
		case bson.TypeInt32, bson.TypeInt64, bson.TypeDouble:
		case bson.TypeDecimal128:
			return fv, refuse(ns, "$inc with a decimal128 operand")
		default:
			return fv, errorf(codeTypeMismatch, "Cannot increment with non-numeric argument: {%s: %s}", p, fv)
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
			return fv, errorf(codeBadValue, "%s is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({$type: 'timestamp/date'}).", fv.Type)
		}
	case "$addToSet":
		if fv.Type == bson.TypeEmbeddedDocument {
			if first, err := bson.Raw(fv.Value).IndexErr(0); err == nil && strings.HasPrefix(first.Key(), "$") && first.Key() != "$each" {
				return fv, refuse(ns, "the $addToSet modifier "+first.Key())
			}
		}
	}
	return fv, nil
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
