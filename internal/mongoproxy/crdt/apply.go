package crdt

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// State is the (possibly absent) document plus its metadata, as stored on one replica.
type State struct {
	Doc  bson.D // nil if the document does not exist; never contains MetaField
	Meta *Meta  // nil means empty
}

// Apply merges op into st and returns the new state. Pure: no I/O, st is not modified.
// changed=false when the op had no effect (duplicate, or dominated by newer writes or a newer
// tombstone); then next is st (with a non-nil Meta).
//
// The document is materialized from the metadata alone; st.Doc is only read when st.Meta is empty
// and st.Doc is not nil: a document that predates replication, whose fields are adopted as
// assignments older than any clock reading.
func Apply(st State, op *Op) (next State, changed bool, err error) {
	fops, err := op.fieldOps()
	if err != nil {
		return st, false, err
	}
	if op.Kind == DDL {
		return st, false, invalid("a DDL op does not apply to a document")
	}
	m := st.Meta
	if m.isEmpty() && st.Doc != nil {
		if m, err = legacyMeta(st.Doc); err != nil {
			return st, false, err
		}
	}
	m = m.clone()
	switch {
	case op.TS.Compare(m.floor) <= 0:
		// At or below the compaction floor: applied before Compact folded it (a duplicate).
	case op.Kind == Delete:
		changed = m.applyDelete(op.TS)
	default:
		if op.TS.Compare(m.del) <= 0 {
			break // older than the tombstone: gone
		}
		if op.TS.Compare(m.live) > 0 {
			m.live = op.TS
			changed = true
		}
		for _, fo := range fops {
			if m.applyField(fo, op.TS) {
				changed = true
			}
		}
	}
	if !changed {
		if st.Meta == nil {
			st.Meta = &Meta{}
		}
		return st, false, nil
	}
	m.version++
	m.noteSeen(op.Origin, op.Seq)
	doc, err := Materialize(op.ID, m)
	if err != nil {
		return st, false, err
	}
	return State{Doc: doc, Meta: m}, true, nil
}

func (m *Meta) isEmpty() bool {
	return m == nil || (m.live.IsZero() && m.del.IsZero() && !m.legacy && len(m.entries) == 0)
}

func legacyMeta(doc bson.D) (*Meta, error) {
	b, err := bson.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("crdt: encode existing document: %w", err)
	}
	m := &Meta{legacy: true}
	elements(b, func(k string, v bsoncore.Value) bool {
		if k == "_id" || k == MetaField {
			return true
		}
		if k == "" || strings.Contains(k, ".") || strings.HasPrefix(k, "$") {
			err = fmt.Errorf("crdt: existing document has field %q: empty, dotted and $-prefixed names cannot be replicated", k)
			return false
		}
		m.entries = append(m.entries, entry{path: k, comps: []string{k}, hasBase: true, present: true,
			val: bsoncore.Value{Type: v.Type, Data: bytes.Clone(v.Data)}, idx: int32(len(m.entries))})
		return true
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(m.entries, func(a, b entry) int { return strings.Compare(a.path, b.path) })
	for i := 1; i < len(m.entries); i++ {
		if m.entries[i].path == m.entries[i-1].path {
			return nil, fmt.Errorf("crdt: existing document has field %q twice", m.entries[i].path)
		}
	}
	return m, nil
}

func (m *Meta) noteSeen(origin string, seq uint64) {
	if origin == "" || seq == 0 {
		return
	}
	i, ok := slices.BinarySearchFunc(m.seen, origin, func(s originSeq, o string) int { return strings.Compare(s.origin, o) })
	if !ok {
		m.seen = slices.Insert(m.seen, i, originSeq{origin, seq})
	} else if m.seen[i].seq < seq {
		m.seen[i].seq = seq
	}
}

// applyDelete raises the tombstone and drops everything older than it.
func (m *Meta) applyDelete(ts Timestamp) bool {
	if ts.Compare(m.del) <= 0 {
		return false
	}
	m.del = ts
	m.legacy = false
	if m.live.Compare(ts) < 0 {
		m.live = Timestamp{} // canonical: only inserts/updates newer than the tombstone count
	}
	kept := m.entries[:0]
	for i := range m.entries {
		if !m.entries[i].dropOlder(ts) {
			kept = append(kept, m.entries[i])
		}
	}
	clear(m.entries[len(kept):])
	m.entries = kept
	return true
}

// dropOlder removes the base and ops older than ts; it reports whether the entry is now empty.
func (e *entry) dropOlder(ts Timestamp) bool {
	if e.hasBase && e.ts.Compare(ts) < 0 {
		e.hasBase, e.present, e.val, e.ts, e.key, e.idx = false, false, bsoncore.Value{}, Timestamp{}, Timestamp{}, 0
	}
	e.ops = slices.DeleteFunc(e.ops, func(o cop) bool { return o.ts.Compare(ts) < 0 })
	return !e.hasBase && len(e.ops) == 0
}

// applyField merges one field operation. It reports whether the metadata changed.
func (m *Meta) applyField(fo fieldOp, ts Timestamp) bool {
	// Dominated by an assignment at least as new to this path or a prefix (equal means this very
	// op, already applied).
	for n := 1; n <= len(fo.comps); n++ {
		p := fo.path
		if n < len(fo.comps) {
			p = strings.Join(fo.comps[:n], ".")
		}
		if i, ok := m.find(p); ok && m.entries[i].hasBase && ts.Compare(m.entries[i].ts) <= 0 {
			return false
		}
	}
	val := bsoncore.Value{Type: fo.val.Type, Data: bytes.Clone(fo.val.Data)}
	i, ok := m.find(fo.path)
	if !ok {
		m.entries = slices.Insert(m.entries, i, entry{path: fo.path, comps: fo.comps})
	}
	e := &m.entries[i]
	if !fo.kind.assigns() {
		j, dup := slices.BinarySearchFunc(e.ops, cop{ts: ts, idx: fo.idx}, func(a, b cop) int { return cmpKey(a.ts, a.idx, b.ts, b.idx) })
		if dup {
			return false
		}
		e.ops = slices.Insert(e.ops, j, cop{kind: fo.kind, val: val, ts: ts, idx: fo.idx})
		return true
	}
	e.hasBase, e.present, e.ts, e.key, e.idx = true, fo.kind == fSet, ts, ts, fo.idx
	e.val = bsoncore.Value{}
	if e.present {
		e.val = val
	}
	e.ops = slices.DeleteFunc(e.ops, func(o cop) bool { return o.ts.Compare(ts) < 0 })
	// Descendant paths ("a.b" for an assignment of "a") are contiguous in path order.
	prefix := fo.path + "."
	j, _ := m.find(prefix)
	for j < len(m.entries) && strings.HasPrefix(m.entries[j].path, prefix) {
		if m.entries[j].dropOlder(ts) {
			m.entries = slices.Delete(m.entries, j, j+1)
			continue
		}
		j++
	}
	return true
}

// event is one retained assignment or commutative op, in replay order.
type event struct {
	ts    Timestamp
	idx   int32
	comps []string
	path  string
	kind  fieldKind
	val   bsoncore.Value
}

// Materialize returns the document the metadata describes (nil if it does not exist): _id first,
// then the retained operations replayed in (clock, index) order with the per-operator semantics.
func Materialize(id bson.RawValue, m *Meta) (bson.D, error) {
	b, err := MaterializeRaw(id, m)
	if b == nil || err != nil {
		return nil, err
	}
	var d bson.D
	if err := bson.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("crdt: decode materialized document: %w", err)
	}
	return d, nil
}

// MaterializeRaw is Materialize returning the encoded document; equal documents are byte-identical.
func MaterializeRaw(id bson.RawValue, m *Meta) (bson.Raw, error) {
	if !m.Exists() {
		return nil, nil
	}
	if err := validateRawValue(id); err != nil {
		return nil, fmt.Errorf("crdt: _id: %w", err)
	}
	var evs []event
	for _, e := range m.entries {
		if e.hasBase {
			k := fSet
			if !e.present {
				k = fUnset
			}
			evs = append(evs, event{ts: e.key, idx: e.idx, comps: e.comps, path: e.path, kind: k, val: e.val})
		}
		for _, o := range e.ops {
			evs = append(evs, event{ts: o.ts, idx: o.idx, comps: e.comps, path: e.path, kind: o.kind, val: o.val})
		}
	}
	slices.SortFunc(evs, func(a, b event) int {
		if c := cmpKey(a.ts, a.idx, b.ts, b.idx); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
	doc := &node{keys: []string{"_id"}, vals: []nodeVal{{v: core(id)}}}
	for _, ev := range evs {
		applyField(doc, ev.comps, ev.kind, ev.val)
	}
	return doc.appendTo(nil), nil
}

// Compact folds, for every path no other retained path is a prefix or an extension of, the pending
// commutative ops with clock <= stable into the base value, and forgets such paths' $unset records
// older than stable. The materialized document does not change.
//
// Precondition: stable is causally stable at this replica, i.e. every op with TS <= stable that
// will ever exist has already been applied here (package repl derives it from the peers'
// heartbeats and positions, and gives it to the replica core). Compact records stable as the metadata's floor and Apply then ignores every op at or
// below it as a duplicate; an op below the floor that was never applied would be lost, hence the
// precondition. It returns m itself when there was nothing to do.
func (m *Meta) Compact(stable Timestamp) (*Meta, bool) {
	if m == nil {
		return &Meta{}, false
	}
	var n *Meta
	for i := range m.entries {
		e := &m.entries[i]
		if !m.isolated(i) {
			continue
		}
		k := 0
		for k < len(e.ops) && e.ops[k].ts.Compare(stable) <= 0 {
			k++
		}
		dropUnset := e.hasBase && !e.present && len(e.ops) == 0 && e.ts.Compare(stable) <= 0
		if k == 0 && !dropUnset {
			continue
		}
		if n == nil {
			n = m.clone()
		}
		ne := &n.entries[i]
		if k > 0 {
			ne.fold(k)
		}
		if ne.hasBase && !ne.present && len(ne.ops) == 0 && ne.ts.Compare(stable) <= 0 {
			ne.path = "" // marked for removal below; "" is never a valid path
		}
	}
	if n == nil {
		return m, false
	}
	n.entries = slices.DeleteFunc(n.entries, func(e entry) bool { return e.path == "" })
	if stable.Compare(n.floor) > 0 {
		n.floor = stable
	}
	n.version++
	return n, true
}

// isolated reports whether no other entry's path is a prefix or an extension of entry i's.
func (m *Meta) isolated(i int) bool {
	p := m.entries[i].path + "."
	if j, _ := m.find(p); j < len(m.entries) && strings.HasPrefix(m.entries[j].path, p) {
		return false // extensions are contiguous from the first path >= "p."
	}
	comps := m.entries[i].comps
	for n := 1; n < len(comps); n++ {
		if _, ok := m.find(strings.Join(comps[:n], ".")); ok {
			return false
		}
	}
	return true
}

// fold merges the first k ops into the base of an isolated entry. Nothing else touches the path,
// so its value is a function of its own events: replay them on a one-field document. The base
// keeps the replay position of whatever created the value, and its dominance clock becomes the
// newest folded op's, so duplicates of folded ops stay recognized.
func (e *entry) fold(k int) {
	doc := &node{}
	comps := []string{"v"}
	key, idx := e.key, e.idx
	if e.hasBase && e.present {
		doc.put("v", nodeVal{v: e.val})
	}
	created := e.hasBase && e.present
	for _, o := range e.ops[:k] {
		applyField(doc, comps, o.kind, o.val)
		if !created {
			// On a missing field every commutative op applies and creates it.
			key, idx, created = o.ts, o.idx, true
		}
	}
	last := e.ops[k-1].ts
	if !e.hasBase || last.Compare(e.ts) > 0 {
		e.ts = last
	}
	v, _, _ := doc.current(comps)
	e.hasBase, e.present, e.val, e.key, e.idx = true, true, v, key, idx
	e.ops = slices.Clone(e.ops[k:])
}

// Replay applies ops to an absent document strictly in the given order, with no conflict
// resolution at all: Insert merges its fields as $set and Update applies its operators (both create
// the document if it is absent), Delete removes the document. It returns nil if the document does
// not exist at the end. This is the sequential building block of the semantics (see the package
// doc); crdttest.Reference feeds it the ops that survive, in clock order.
func Replay(id bson.RawValue, ops []*Op) (bson.Raw, error) {
	if err := validateRawValue(id); err != nil {
		return nil, fmt.Errorf("crdt: _id: %w", err)
	}
	var doc *node
	for _, op := range ops {
		fops, err := op.fieldOps()
		if err != nil {
			return nil, err
		}
		if op.Kind == Delete {
			doc = nil
			continue
		}
		if doc == nil {
			doc = &node{keys: []string{"_id"}, vals: []nodeVal{{v: core(id)}}}
		}
		slices.SortFunc(fops, func(a, b fieldOp) int { return int(a.idx) - int(b.idx) })
		for _, fo := range fops {
			applyField(doc, fo.comps, fo.kind, fo.val)
		}
	}
	if doc == nil {
		return nil, nil
	}
	return doc.appendTo(nil), nil
}
