package crdt

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// MetaField is the hidden field holding metadata inside every replicated document.
const MetaField = "_edgenode"

// Meta is the per-document metadata: the tombstone clock, the latest insert/update clock, for each
// written path the base assignment (value or unset, with its clock) and the pending commutative
// operations newer than it, the per-origin max seq applied (informational watermark) and a Version
// incremented on each write (for compare-and-swap).
//
// A Meta is immutable once returned by Apply, DecodeMeta or Compact; they all return new values.
// The zero value (and nil) is the metadata of a document nothing has been applied to.
type Meta struct {
	version int64
	live    Timestamp // latest Insert/Update
	del     Timestamp // latest Delete (tombstone)
	legacy  bool      // the document predates replication (no metadata when first touched)
	floor   Timestamp // Compact's stable point: every op at or below it has been applied already
	seen    []originSeq
	entries []entry // sorted by path, unique
}

type originSeq struct {
	origin string
	seq    uint64
}

// entry is everything retained for one field path. Invariants: ops are sorted by (ts, idx) and
// all newer than the base; no retained op is older than an assignment (base) of a prefix of its
// path or than the tombstone; an entry with neither base nor ops is removed.
type entry struct {
	path    string
	comps   []string
	hasBase bool
	present bool           // base assigns val; otherwise it is an $unset
	val     bsoncore.Value // copied bytes
	ts      Timestamp      // dominance clock of the base: everything older on this path is folded in
	key     Timestamp      // replay position of the base (== ts unless Compact folded later ops in)
	idx     int32
	ops     []cop
}

// cop is a pending commutative operation ($inc, $min, $max, $addToSet).
type cop struct {
	kind fieldKind
	val  bsoncore.Value
	ts   Timestamp
	idx  int32
}

func (m *Meta) clone() *Meta {
	n := &Meta{}
	if m == nil {
		return n
	}
	*n = *m
	n.seen = slices.Clone(m.seen)
	n.entries = slices.Clone(m.entries)
	for i := range n.entries {
		n.entries[i].ops = slices.Clone(n.entries[i].ops)
	}
	return n
}

// Version is incremented by every Apply that changes the document or its metadata (and by
// Compact), for a compare-and-swap write conditional on the stored version.
func (m *Meta) Version() int64 {
	if m == nil {
		return 0
	}
	return m.version
}

// Tombstone returns the clock of the latest Delete applied (zero if none).
func (m *Meta) Tombstone() Timestamp {
	if m == nil {
		return Timestamp{}
	}
	return m.del
}

// Exists reports whether the document exists: an insert or update newer than the latest delete.
func (m *Meta) Exists() bool {
	if m == nil {
		return false
	}
	return m.live.Compare(m.del) > 0 || (m.legacy && m.del.IsZero())
}

// Seen returns the highest Seq applied per origin (informational; a fresh map).
func (m *Meta) Seen() map[string]uint64 {
	out := map[string]uint64{}
	if m != nil {
		for _, s := range m.seen {
			out[s.origin] = s.seq
		}
	}
	return out
}

// SeenSeq returns the highest Seq of origin that changed the document (0 if none).
func (m *Meta) SeenSeq(origin string) uint64 {
	if m == nil {
		return 0
	}
	i, ok := slices.BinarySearchFunc(m.seen, origin, func(s originSeq, o string) int { return strings.Compare(s.origin, o) })
	if !ok {
		return 0
	}
	return m.seen[i].seq
}

// PendingOps returns the number of retained commutative operations (a measure of metadata size
// that only Compact reduces).
func (m *Meta) PendingOps() int {
	n := 0
	if m != nil {
		for _, e := range m.entries {
			n += len(e.ops)
		}
	}
	return n
}

// Equal reports whether m and o carry the same data-bearing metadata: everything except Version,
// the Seen watermark and the compaction floor. Replicas that applied the same set of ops (and did not Compact) are Equal.
func (m *Meta) Equal(o *Meta) bool {
	if m == nil {
		m = &Meta{}
	}
	if o == nil {
		o = &Meta{}
	}
	if m.live != o.live || m.del != o.del || m.legacy != o.legacy || len(m.entries) != len(o.entries) {
		return false
	}
	for i := range m.entries {
		a, b := &m.entries[i], &o.entries[i]
		if a.path != b.path || a.hasBase != b.hasBase || len(a.ops) != len(b.ops) {
			return false
		}
		if a.hasBase && (a.present != b.present || !valEqual(a.val, b.val) || a.ts != b.ts || a.key != b.key || a.idx != b.idx) {
			return false
		}
		for j := range a.ops {
			x, y := a.ops[j], b.ops[j]
			if x.kind != y.kind || x.ts != y.ts || x.idx != y.idx || !valEqual(x.val, y.val) {
				return false
			}
		}
	}
	return true
}

func valEqual(a, b bsoncore.Value) bool { return a.Type == b.Type && bytes.Equal(a.Data, b.Data) }

func (m *Meta) find(path string) (int, bool) {
	return slices.BinarySearchFunc(m.entries, path, func(e entry, p string) int { return strings.Compare(e.path, p) })
}

// Encoding (field names are short because the metadata lives in every document; paths are values,
// never keys, because they contain dots):
//
//	{v: int64 version, l: ts live, d: ts tombstone, g: true if legacy, c: ts compaction floor,
//	 w: [[origin, int64 seq], ...],
//	 f: [{p: path, t: ts base, k: ts key (if != t), i: int32 idx (if != 0),
//	      x: value (if set and not in the document) or y: true (set, value in the document),
//	      o: [[int32 kind, ts, int32 idx, value], ...]}, ...]}
//
// with ts = [int64 wall, int64 logical, node]. Zero/empty fields are omitted.
//
// Version 1 of the encoding (what Encode writes, and all that existed before EncodeWith) copies
// every assigned value into x. EncodeWith writes y instead of x wherever the document the metadata
// is stored with holds exactly that value at that path, which is the common case (a path set and
// not changed since by commutative ops or by writes to its sub-paths), so a value is stored once.
// DecodeMetaWith reads both forms; a document written in the old form is rewritten in the new one
// by its next write.

// Encode returns what to store under MetaField, every value copied into the metadata: the form
// for metadata stored apart from its document (a tombstone), and the old form.
func (m *Meta) Encode() bson.Raw { return m.EncodeWith(nil) }

// EncodeWith returns what to store under MetaField of doc, the document the metadata describes
// exactly as it is stored (MetaField itself, if present, is ignored). An assigned value that doc
// holds byte for byte at its path is not copied: DecodeMetaWith takes it from the same document.
// Since Materialize replays assignments and the value is checked here rather than inferred, this
// is exact whatever the history of the path. A nil doc copies every value (Encode).
func (m *Meta) EncodeWith(doc bson.Raw) bson.Raw {
	if m == nil {
		m = &Meta{}
	}
	idx, b := bsoncore.AppendDocumentStart(nil)
	b = bsoncore.AppendInt64Element(b, "v", m.version)
	if !m.live.IsZero() {
		b = appendTSElement(b, "l", m.live)
	}
	if !m.del.IsZero() {
		b = appendTSElement(b, "d", m.del)
	}
	if m.legacy {
		b = bsoncore.AppendBooleanElement(b, "g", true)
	}
	if !m.floor.IsZero() {
		b = appendTSElement(b, "c", m.floor)
	}
	if len(m.seen) > 0 {
		var ai int32
		ai, b = bsoncore.AppendArrayElementStart(b, "w")
		for i, s := range m.seen {
			var pi int32
			pi, b = bsoncore.AppendArrayElementStart(b, itoa(i))
			b = bsoncore.AppendStringElement(b, "0", s.origin)
			b = bsoncore.AppendInt64Element(b, "1", int64(s.seq))
			b, _ = bsoncore.AppendArrayEnd(b, pi)
		}
		b, _ = bsoncore.AppendArrayEnd(b, ai)
	}
	if len(m.entries) > 0 {
		var ai int32
		ai, b = bsoncore.AppendArrayElementStart(b, "f")
		for i := range m.entries {
			e := &m.entries[i]
			var ei int32
			ei, b = bsoncore.AppendDocumentElementStart(b, itoa(i))
			b = bsoncore.AppendStringElement(b, "p", e.path)
			if e.hasBase {
				b = appendTSElement(b, "t", e.ts)
				if e.key != e.ts {
					b = appendTSElement(b, "k", e.key)
				}
				if e.idx != 0 {
					b = bsoncore.AppendInt32Element(b, "i", e.idx)
				}
				switch {
				case e.present && inDoc(doc, e.comps, e.val):
					b = bsoncore.AppendBooleanElement(b, "y", true)
				case e.present:
					b = bsoncore.AppendValueElement(b, "x", e.val)
				}
			}
			if len(e.ops) > 0 {
				var oi int32
				oi, b = bsoncore.AppendArrayElementStart(b, "o")
				for j, o := range e.ops {
					var ci int32
					ci, b = bsoncore.AppendArrayElementStart(b, itoa(j))
					b = bsoncore.AppendInt32Element(b, "0", int32(o.kind))
					b = appendTSElement(b, "1", o.ts)
					b = bsoncore.AppendInt32Element(b, "2", o.idx)
					b = bsoncore.AppendValueElement(b, "3", o.val)
					b, _ = bsoncore.AppendArrayEnd(b, ci)
				}
				b, _ = bsoncore.AppendArrayEnd(b, oi)
			}
			b, _ = bsoncore.AppendDocumentEnd(b, ei)
		}
		b, _ = bsoncore.AppendArrayEnd(b, ai)
	}
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}

// inDoc reports whether doc holds exactly v at the path comps.
func inDoc(doc bson.Raw, comps []string, v bsoncore.Value) bool {
	if doc == nil || comps[0] == MetaField || len(v.Data) <= 1 {
		return false // (a null or a boolean is no longer than the mark y: true)
	}
	got, err := bsoncore.Document(doc).LookupErr(comps...)
	return err == nil && valEqual(got, v)
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return fmt.Sprint(i)
}

// DecodeMeta parses what Encode produced. The zero RawValue (field absent) gives an empty Meta.
// The input is treated as untrusted: anything malformed is an error, never a panic. Metadata that
// leaves values in its document (EncodeWith) needs DecodeMetaWith.
func DecodeMeta(rv bson.RawValue) (*Meta, error) { return DecodeMetaWith(rv, nil) }

// DecodeMetaWith parses what Encode or EncodeWith produced, stored in doc (nil for metadata stored
// apart from its document): values the metadata left in the document are copied from doc, and
// one that doc does not hold is an error (the document was changed behind the proxy's back; a
// value changed there is taken as it is, as the application reads it).
func DecodeMetaWith(rv bson.RawValue, doc bson.Raw) (*Meta, error) {
	if rv.Type == 0 {
		return &Meta{}, nil
	}
	if rv.Type != bson.TypeEmbeddedDocument {
		return nil, fmt.Errorf("crdt: %s is a %s, not a document", MetaField, rv.Type)
	}
	b := bytes.Clone(rv.Value)
	if err := validateDoc(b, 0); err != nil {
		return nil, fmt.Errorf("crdt: decode %s: %w", MetaField, err)
	}
	m := &Meta{}
	seen := map[string]bool{}
	var err error
	elements(b, func(k string, v bsoncore.Value) bool {
		if seen[k] {
			err = fmt.Errorf("duplicate field %q", k)
			return false
		}
		seen[k] = true
		switch k {
		case "v":
			m.version, err = int64Field(k, v)
		case "l":
			m.live, err = decodeTS(v)
		case "d":
			m.del, err = decodeTS(v)
		case "c":
			m.floor, err = decodeTS(v)
		case "g":
			if v.Type != bsoncore.TypeBoolean {
				err = fmt.Errorf("field g: want bool, got %s", v.Type)
			}
			m.legacy = v.Type == bsoncore.TypeBoolean && v.Boolean()
		case "w":
			err = eachArray(k, v, func(e bsoncore.Value) error {
				var parts []bsoncore.Value
				if e.Type == bsoncore.TypeArray {
					elements(e.Data, func(_ string, x bsoncore.Value) bool { parts = append(parts, x); return true })
				}
				if len(parts) != 2 || parts[0].Type != bsoncore.TypeString || parts[1].Type != bsoncore.TypeInt64 || parts[1].Int64() < 0 {
					return fmt.Errorf("watermark: want [origin, seq]")
				}
				m.seen = append(m.seen, originSeq{parts[0].StringValue(), uint64(parts[1].Int64())})
				return nil
			})
		case "f":
			err = eachArray(k, v, func(e bsoncore.Value) error {
				en, err := decodeEntry(e, doc)
				if err == nil {
					m.entries = append(m.entries, en)
				}
				return err
			})
		default:
			err = fmt.Errorf("unknown field %q", k)
		}
		return err == nil
	})
	if err != nil {
		return nil, fmt.Errorf("crdt: decode %s: %w", MetaField, err)
	}
	slices.SortFunc(m.seen, func(a, b originSeq) int { return strings.Compare(a.origin, b.origin) })
	slices.SortFunc(m.entries, func(a, b entry) int { return strings.Compare(a.path, b.path) })
	for i := 1; i < len(m.seen); i++ {
		if m.seen[i].origin == m.seen[i-1].origin {
			return nil, fmt.Errorf("crdt: decode %s: origin %q twice", MetaField, m.seen[i].origin)
		}
	}
	for i := 1; i < len(m.entries); i++ {
		if m.entries[i].path == m.entries[i-1].path {
			return nil, fmt.Errorf("crdt: decode %s: path %q twice", MetaField, m.entries[i].path)
		}
	}
	return m, nil
}

func eachArray(k string, v bsoncore.Value, fn func(bsoncore.Value) error) error {
	if v.Type != bsoncore.TypeArray {
		return fmt.Errorf("field %s: want array, got %s", k, v.Type)
	}
	var err error
	elements(v.Data, func(_ string, e bsoncore.Value) bool {
		err = fn(e)
		return err == nil
	})
	return err
}

func decodeEntry(v bsoncore.Value, doc bson.Raw) (entry, error) {
	var e entry
	if v.Type != bsoncore.TypeEmbeddedDocument {
		return e, fmt.Errorf("path entry: want document, got %s", v.Type)
	}
	var err error
	var hasKey, hasPath, valInDoc bool
	seen := map[string]bool{}
	elements(v.Data, func(k string, x bsoncore.Value) bool {
		if seen[k] {
			err = fmt.Errorf("path entry: duplicate field %q", k)
			return false
		}
		seen[k] = true
		switch k {
		case "p":
			e.path, err = stringField(k, x)
			if err == nil {
				e.comps, err = splitPath(e.path)
			}
			hasPath = true
		case "t":
			e.ts, err = decodeTS(x)
			e.hasBase = true
		case "k":
			e.key, err = decodeTS(x)
			hasKey = true
		case "i":
			if x.Type != bsoncore.TypeInt32 {
				err = fmt.Errorf("path entry: field i: want int32, got %s", x.Type)
			} else {
				e.idx = x.Int32()
			}
		case "x":
			e.present, e.val = true, x
		case "y":
			if x.Type != bsoncore.TypeBoolean || !x.Boolean() {
				err = fmt.Errorf("path entry: field y: want true, got %s", x)
			}
			valInDoc = true
		case "o":
			err = eachArray(k, x, func(c bsoncore.Value) error {
				var parts []bsoncore.Value
				if c.Type == bsoncore.TypeArray {
					elements(c.Data, func(_ string, y bsoncore.Value) bool { parts = append(parts, y); return true })
				}
				if len(parts) != 4 || parts[0].Type != bsoncore.TypeInt32 || parts[2].Type != bsoncore.TypeInt32 {
					return fmt.Errorf("pending op: want [kind, ts, idx, value]")
				}
				o := cop{kind: fieldKind(parts[0].Int32()), idx: parts[2].Int32(), val: parts[3]}
				if parts[0].Int32() < int32(fInc) || parts[0].Int32() > int32(fAddToSet) {
					return fmt.Errorf("pending op: unknown kind %d", parts[0].Int32())
				}
				if (o.kind == fInc && !isIncNumber(o.val.Type)) || (o.kind == fAddToSet && o.val.Type != bsoncore.TypeArray) {
					return fmt.Errorf("pending op: %s with a %s operand", o.kind, o.val.Type)
				}
				var err error
				o.ts, err = decodeTS(parts[1])
				e.ops = append(e.ops, o)
				return err
			})
		default:
			err = fmt.Errorf("path entry: unknown field %q", k)
		}
		return err == nil
	})
	switch {
	case err != nil:
	case !hasPath:
		err = fmt.Errorf("path entry without a path")
	case !e.hasBase && (hasKey || e.present || valInDoc || e.idx != 0):
		err = fmt.Errorf("path entry %q: base fields without a base clock", e.path)
	case valInDoc && e.present:
		err = fmt.Errorf("path entry %q: value both in the metadata and in the document", e.path)
	case valInDoc:
		var got bsoncore.Value
		if doc != nil && e.comps[0] != MetaField {
			got, err = bsoncore.Document(doc).LookupErr(e.comps...)
		}
		if doc == nil || e.comps[0] == MetaField || err != nil {
			err = fmt.Errorf("path entry %q: the value is kept in the document, which does not hold it", e.path)
			break
		}
		e.present, e.val = true, bsoncore.Value{Type: got.Type, Data: bytes.Clone(got.Data)}
	case !e.hasBase && len(e.ops) == 0:
		err = fmt.Errorf("path entry %q is empty", e.path)
	}
	if err != nil {
		return e, err
	}
	if !hasKey {
		e.key = e.ts
	}
	slices.SortFunc(e.ops, func(a, b cop) int { return cmpKey(a.ts, a.idx, b.ts, b.idx) })
	return e, nil
}

func cmpKey(ta Timestamp, ia int32, tb Timestamp, ib int32) int {
	if c := ta.Compare(tb); c != 0 {
		return c
	}
	switch {
	case ia < ib:
		return -1
	case ia > ib:
		return 1
	}
	return 0
}
