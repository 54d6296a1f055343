package crdt

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// Kind is the kind of change an Op makes to its document.
type Kind uint8

// The kinds of Op.
const (
	Insert Kind = iota + 1
	Update
	Delete
	// DDL is a collection or index change (see DDLCommand). It has no
	// document semantics: Apply refuses it, the proxy executes it.
	DDL
)

func (k Kind) String() string {
	switch k {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case DDL:
		return "ddl"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Op is one replicated change to one document.
type Op struct {
	Origin string        // node id that accepted the write
	Seq    uint64        // per-origin sequence, assigned by the op log (1, 2, 3, ...)
	TS     Timestamp     // HLC of the origin at capture time; TS.Node must equal Origin
	NS     string        // "db.collection"
	ID     bson.RawValue // the document's _id
	Kind   Kind
	Doc    bson.Raw // Insert: the full document (including _id); DDL: the command (see DDLCommand)
	Update bson.Raw // Update: operator document using only $set, $unset, $inc, $min, $max, $addToSet
}

// ErrInvalidOp is wrapped by every error Validate and UnmarshalBSON return.
var ErrInvalidOp = errors.New("crdt: invalid op")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidOp, fmt.Sprintf(format, args...))
}

// Stable encoding: a BSON document with the fields below in this order; absent d/u are omitted.
//
//	{o: origin, s: int64 seq, t: [int64 wall, int64 logical, node], n: ns, i: _id, k: int32 kind, d: doc, u: update}
const (
	keyOrigin = "o"
	keySeq    = "s"
	keyTS     = "t"
	keyNS     = "n"
	keyID     = "i"
	keyKind   = "k"
	keyDoc    = "d"
	keyUpdate = "u"
)

// MarshalBSON encodes o in the stable form used by the op log and between peers.
func (o *Op) MarshalBSON() ([]byte, error) {
	if o.ID.Type == 0 {
		return nil, invalid("missing _id")
	}
	if o.Seq > math.MaxInt64 {
		return nil, invalid("seq %d out of range", o.Seq)
	}
	n := 64 + len(o.Origin) + len(o.NS) + len(o.TS.Node) + len(o.ID.Value) + len(o.Doc) + len(o.Update)
	idx, b := bsoncore.AppendDocumentStart(make([]byte, 0, n))
	b = bsoncore.AppendStringElement(b, keyOrigin, o.Origin)
	b = bsoncore.AppendInt64Element(b, keySeq, int64(o.Seq))
	b = appendTSElement(b, keyTS, o.TS)
	b = bsoncore.AppendStringElement(b, keyNS, o.NS)
	b = bsoncore.AppendValueElement(b, keyID, core(o.ID))
	b = bsoncore.AppendInt32Element(b, keyKind, int32(o.Kind))
	if o.Doc != nil {
		b = bsoncore.AppendDocumentElement(b, keyDoc, o.Doc)
	}
	if o.Update != nil {
		b = bsoncore.AppendDocumentElement(b, keyUpdate, o.Update)
	}
	return bsoncore.AppendDocumentEnd(b, idx)
}

// UnmarshalBSON decodes the stable encoding. It checks the structure (strictly: unknown or
// duplicate fields and wrong types are errors) but not the semantics; call Validate for those.
// The Op does not alias b.
func (o *Op) UnmarshalBSON(b []byte) error {
	if err := validateDoc(b, 0); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidOp, err)
	}
	b = bytes.Clone(b)
	*o = Op{}
	seen := map[string]bool{}
	var err error
	elements(b, func(k string, v bsoncore.Value) bool {
		if seen[k] {
			err = invalid("duplicate field %q", k)
			return false
		}
		seen[k] = true
		switch k {
		case keyOrigin:
			o.Origin, err = stringField(k, v)
		case keySeq:
			var s int64
			s, err = int64Field(k, v)
			if err == nil && s < 0 {
				err = invalid("negative seq")
			}
			o.Seq = uint64(s)
		case keyTS:
			o.TS, err = decodeTS(v)
		case keyNS:
			o.NS, err = stringField(k, v)
		case keyID:
			o.ID = raw(v)
		case keyKind:
			if v.Type != bsoncore.TypeInt32 {
				err = invalid("field %q: want int32, got %s", k, v.Type)
				break
			}
			i := v.Int32()
			if i < 0 || i > math.MaxUint8 {
				err = invalid("kind %d out of range", i)
			}
			o.Kind = Kind(i)
		case keyDoc, keyUpdate:
			if v.Type != bsoncore.TypeEmbeddedDocument {
				err = invalid("field %q: want document, got %s", k, v.Type)
				break
			}
			if k == keyDoc {
				o.Doc = bson.Raw(v.Data)
			} else {
				o.Update = bson.Raw(v.Data)
			}
		default:
			err = invalid("unknown field %q", k)
		}
		return err == nil
	})
	if err != nil {
		return err
	}
	for _, k := range []string{keyOrigin, keySeq, keyTS, keyNS, keyID, keyKind} {
		if !seen[k] {
			return invalid("missing field %q", k)
		}
	}
	return nil
}

func stringField(k string, v bsoncore.Value) (string, error) {
	if v.Type != bsoncore.TypeString {
		return "", invalid("field %q: want string, got %s", k, v.Type)
	}
	return v.StringValue(), nil
}

func int64Field(k string, v bsoncore.Value) (int64, error) {
	if v.Type != bsoncore.TypeInt64 {
		return 0, invalid("field %q: want int64, got %s", k, v.Type)
	}
	return v.Int64(), nil
}

func appendTSElement(b []byte, key string, t Timestamp) []byte {
	idx, b := bsoncore.AppendArrayElementStart(b, key)
	b = bsoncore.AppendInt64Element(b, "0", t.Wall)
	b = bsoncore.AppendInt64Element(b, "1", int64(t.Logical))
	b = bsoncore.AppendStringElement(b, "2", t.Node)
	b, _ = bsoncore.AppendArrayEnd(b, idx)
	return b
}

func decodeTS(v bsoncore.Value) (Timestamp, error) {
	if v.Type != bsoncore.TypeArray {
		return Timestamp{}, invalid("timestamp: want array, got %s", v.Type)
	}
	var vals []bsoncore.Value
	elements(v.Data, func(_ string, e bsoncore.Value) bool { vals = append(vals, e); return true })
	if len(vals) != 3 || vals[0].Type != bsoncore.TypeInt64 || vals[1].Type != bsoncore.TypeInt64 || vals[2].Type != bsoncore.TypeString {
		return Timestamp{}, invalid("timestamp: want [int64, int64, string]")
	}
	l := vals[1].Int64()
	if l < 0 || l > math.MaxUint32 {
		return Timestamp{}, invalid("timestamp: logical %d out of range", l)
	}
	return Timestamp{Wall: vals[0].Int64(), Logical: uint32(l), Node: vals[2].StringValue()}, nil
}

// fieldOp is one per-field operation an Op decomposes into.
type fieldOp struct {
	path  string
	comps []string
	kind  fieldKind
	val   bsoncore.Value // fSet/fInc/fMin/fMax: the operand; fAddToSet: array of elements; fUnset: none
	idx   int32          // order among the Op's field operations (see fieldOps)
}

var updateOperators = map[string]fieldKind{
	"$set": fSet, "$unset": fUnset, "$inc": fInc, "$min": fMin, "$max": fMax, "$addToSet": fAddToSet,
}

// Validate checks that o is an op Apply accepts: known kind, namespace, _id, a clock reading from
// its origin, and for updates only the supported operators on valid, non-conflicting paths.
func (o *Op) Validate() error {
	_, err := o.fieldOps()
	return err
}

// fieldOps validates o and decomposes it. Insert: one $set per top-level field except _id, idx =
// position in the document. Update: the field operations sorted by path (MongoDB 5+ applies an
// update's fields in lexicographic order, which fixes the order new fields are appended in),
// idx = rank in that order. Delete: none.
func (o *Op) fieldOps() ([]fieldOp, error) {
	switch o.Kind {
	case Insert, Update, Delete, DDL:
	default:
		return nil, invalid("unknown kind %d", o.Kind)
	}
	if db, coll, ok := strings.Cut(o.NS, "."); !ok || db == "" || coll == "" {
		return nil, invalid("namespace %q is not \"db.collection\"", o.NS)
	}
	if err := validateRawValue(o.ID); err != nil {
		return nil, invalid("_id: %v", err)
	}
	switch bsoncore.Type(o.ID.Type) {
	case bsoncore.TypeArray, bsoncore.TypeUndefined, bsoncore.TypeRegex:
		return nil, invalid("_id cannot be of type %s", o.ID.Type)
	}
	if o.TS.IsZero() || o.TS.Node == "" {
		return nil, invalid("missing timestamp")
	}
	if o.Origin != "" && o.TS.Node != o.Origin {
		return nil, invalid("timestamp node %q differs from origin %q", o.TS.Node, o.Origin)
	}
	switch o.Kind {
	case DDL:
		_, err := o.DDLCommand()
		return nil, err
	case Delete:
		if o.Doc != nil || o.Update != nil {
			return nil, invalid("delete carries a document")
		}
		return nil, nil
	case Insert:
		if o.Update != nil || o.Doc == nil {
			return nil, invalid("insert needs a document and no update")
		}
		return o.insertFieldOps()
	default:
		if o.Doc != nil || o.Update == nil {
			return nil, invalid("update needs an update document and no document")
		}
		return o.updateFieldOps()
	}
}

func (o *Op) insertFieldOps() ([]fieldOp, error) {
	if err := validateDoc(o.Doc, 0); err != nil {
		return nil, invalid("insert document: %v", err)
	}
	var ops []fieldOp
	var err error
	hasID := false
	elements(o.Doc, func(k string, v bsoncore.Value) bool {
		switch {
		case k == "_id":
			if hasID {
				err = invalid("insert document has two _id fields")
			} else if v.Type != bsoncore.Type(o.ID.Type) || !bytes.Equal(v.Data, o.ID.Value) {
				err = invalid("insert document _id differs from the op's _id")
			}
			hasID = true
		case k == MetaField:
			err = invalid("insert document contains the reserved field %q", MetaField)
		case k == "" || strings.Contains(k, ".") || strings.HasPrefix(k, "$"):
			err = invalid("insert document field name %q: empty, dotted and $-prefixed names are not supported on replicated collections", k)
		default:
			for _, p := range ops {
				if p.path == k {
					err = invalid("insert document has field %q twice", k)
					return false
				}
			}
			ops = append(ops, fieldOp{path: k, comps: []string{k}, kind: fSet, val: v, idx: int32(len(ops))})
		}
		return err == nil
	})
	if err == nil && !hasID {
		err = invalid("insert document has no _id")
	}
	return ops, err
}

func (o *Op) updateFieldOps() ([]fieldOp, error) {
	if err := validateDoc(o.Update, 0); err != nil {
		return nil, invalid("update document: %v", err)
	}
	var ops []fieldOp
	var err error
	seenOp := map[string]bool{}
	elements(o.Update, func(opName string, operand bsoncore.Value) bool {
		kind, ok := updateOperators[opName]
		if !ok {
			if strings.HasPrefix(opName, "$") {
				err = invalid("update operator %s is not supported on replicated collections (only $set, $unset, $inc, $min, $max, $addToSet converge)", opName)
			} else {
				err = invalid("update document field %q is not an operator: replacement updates are not supported on replicated collections", opName)
			}
			return false
		}
		if seenOp[opName] {
			err = invalid("update operator %s appears twice", opName)
			return false
		}
		seenOp[opName] = true
		if operand.Type != bsoncore.TypeEmbeddedDocument {
			err = invalid("%s needs a document operand, got %s", opName, operand.Type)
			return false
		}
		elements(operand.Data, func(path string, v bsoncore.Value) bool {
			var comps []string
			if comps, err = splitPath(path); err != nil {
				err = invalid("%s: %v", opName, err)
				return false
			}
			fo := fieldOp{path: path, comps: comps, kind: kind, val: v}
			switch kind {
			case fUnset:
				fo.val = bsoncore.Value{}
			case fInc:
				if !isIncNumber(v.Type) {
					err = invalid("$inc of %q: operand must be int32, int64 or double, got %s", path, v.Type)
				}
			case fAddToSet:
				fo.val, err = addToSetElements(path, v)
			}
			ops = append(ops, fo)
			return err == nil
		})
		return err == nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ops, func(a, b fieldOp) int { return strings.Compare(a.path, b.path) })
	for i := range ops {
		ops[i].idx = int32(i)
		// Quadratic, but updates name few fields; sorting alone does not make prefixes adjacent
		// ("a" < "a-b" < "a.b").
		for j := 0; j < i; j++ {
			if ops[j].path == ops[i].path {
				return nil, invalid("updating the path %q twice (%s and %s)", ops[i].path, ops[j].kind, ops[i].kind)
			}
			if isPrefixPath(ops[j].path, ops[i].path) {
				return nil, invalid("updating the path %q would create a conflict at %q", ops[i].path, ops[j].path)
			}
		}
	}
	return ops, nil
}

// isPrefixPath reports whether p is a strict path prefix of q ("a" of "a.b", not of "ab").
func isPrefixPath(p, q string) bool {
	return len(q) > len(p) && q[len(p)] == '.' && strings.HasPrefix(q, p)
}

func splitPath(path string) ([]string, error) {
	if path == "" {
		return nil, errors.New("empty field path")
	}
	comps := strings.Split(path, ".")
	for _, c := range comps {
		switch {
		case c == "":
			return nil, fmt.Errorf("field path %q has an empty component", path)
		case strings.HasPrefix(c, "$"):
			return nil, fmt.Errorf("field path %q: positional and $-prefixed components are not supported on replicated collections", path)
		}
	}
	switch comps[0] {
	case "_id":
		return nil, fmt.Errorf("field path %q: _id is immutable", path)
	case MetaField:
		return nil, fmt.Errorf("field path %q: %s is reserved", path, MetaField)
	}
	return comps, nil
}

// addToSetElements normalizes an $addToSet operand to an array of elements: {$each: [...]} gives
// its array, any other value a one-element array.
func addToSetElements(path string, v bsoncore.Value) (bsoncore.Value, error) {
	if v.Type == bsoncore.TypeEmbeddedDocument {
		var first string
		n := 0
		var each bsoncore.Value
		elements(v.Data, func(k string, e bsoncore.Value) bool {
			if n == 0 {
				first, each = k, e
			}
			n++
			return true
		})
		if first == "$each" {
			if n != 1 {
				return bsoncore.Value{}, invalid("$addToSet of %q: $each must be the only field", path)
			}
			if each.Type != bsoncore.TypeArray {
				return bsoncore.Value{}, invalid("$addToSet of %q: $each needs an array, got %s", path, each.Type)
			}
			return each, nil
		}
	}
	return bsoncore.Value{Type: bsoncore.TypeArray, Data: bsoncore.BuildArray(nil, v)}, nil
}

// DDL commands, the first key of a DDL op's document.
const (
	DDLCreate        = "create"        // {create: coll, <options>}; ID "collection"
	DDLDrop          = "drop"          // {drop: coll}; ID "collection"
	DDLCreateIndexes = "createIndexes" // {createIndexes: coll, indexes: [spec]} (one spec with a name); ID "index:<name>"
	DDLDropIndexes   = "dropIndexes"   // {dropIndexes: coll, index: name}; ID "index:<name>"
)

// DDLKey returns the ID a DDL op on an index or on the collection itself carries: operations
// with the same namespace and key are ordered last-writer-wins by Timestamp.
func DDLKey(index string) string {
	if index == "" {
		return "collection"
	}
	return "index:" + index
}

// DDLCommand validates a DDL op and returns its command name (one of the DDL* constants). The
// command's collection must be the op's, and its ID the DDLKey of what it changes.
func (o *Op) DDLCommand() (string, error) {
	if o.Kind != DDL {
		return "", invalid("not a DDL op")
	}
	if o.Update != nil || o.Doc == nil {
		return "", invalid("DDL op needs a command document and no update")
	}
	if err := validateDoc(o.Doc, 0); err != nil {
		return "", invalid("DDL command: %v", err)
	}
	if o.ID.Type != bson.TypeString {
		return "", invalid("DDL op _id must be a string key")
	}
	key := o.ID.StringValue()
	_, coll, _ := strings.Cut(o.NS, ".")
	first, err := o.Doc.IndexErr(0)
	if err != nil {
		return "", invalid("empty DDL command")
	}
	name := first.Key()
	if c, ok := first.Value().StringValueOK(); !ok || c != coll {
		return "", invalid("DDL command %s names a collection other than %q", name, coll)
	}
	switch name {
	case DDLCreate, DDLDrop:
		if key != DDLKey("") {
			return "", invalid("DDL %s must have the key %q", name, DDLKey(""))
		}
		if name == DDLDrop && len(mustElements(o.Doc)) != 1 {
			return "", invalid("DDL drop takes no options")
		}
	case DDLCreateIndexes:
		idx, err := o.Doc.LookupErr("indexes")
		if err != nil || idx.Type != bson.TypeArray {
			return "", invalid("DDL createIndexes needs an indexes array")
		}
		vals, err := bson.Raw(idx.Value).Values()
		if err != nil || len(vals) != 1 || vals[0].Type != bson.TypeEmbeddedDocument {
			return "", invalid("DDL createIndexes carries exactly one index specification")
		}
		n, ok := bson.Raw(vals[0].Value).Lookup("name").StringValueOK()
		if !ok || n == "" || key != DDLKey(n) {
			return "", invalid("DDL createIndexes: the index needs a name matching the key %q", key)
		}
	case DDLDropIndexes:
		n, ok := o.Doc.Lookup("index").StringValueOK()
		if !ok || n == "" || n == "*" || key != DDLKey(n) {
			return "", invalid("DDL dropIndexes needs one index name matching the key %q", key)
		}
	default:
		return "", invalid("unknown DDL command %q", name)
	}
	return name, nil
}

func mustElements(d bson.Raw) []bson.RawElement {
	els, _ := d.Elements()
	return els
}
