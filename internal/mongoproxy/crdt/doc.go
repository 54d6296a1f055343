// Package crdt is the convergent merge at the heart of the multi-master Mongo layer: a pure
// function Apply(state, op) → state that every replica runs on every replicated operation, in
// whatever order and however many times the operations arrive, and that leaves every replica with
// byte-identical documents. It does no I/O.
//
// # Operations and clocks
//
// Every captured write becomes one Op per document: origin node, per-origin sequence (assigned by
// the op log), a hybrid logical clock reading (Timestamp: wall milliseconds, logical counter, node
// id; compared in that order, so the node id breaks ties), namespace, _id, and an Insert document,
// an Update operator document or a Delete. The Clock never goes backwards when the wall clock does
// (the logical counter absorbs it) and Observe folds in remote readings, so a write made after
// seeing another gets a larger Timestamp. Each origin hands out distinct Timestamps, and Apply uses
// them to recognize duplicates; Validate insists that TS.Node equals Origin.
//
// A fourth kind, DDL, carries a collection or index change (DDLCommand validates it); it has no
// document semantics: Apply refuses it and the proxy executes it (last writer wins per namespace
// and key, see package mongoproxy).
//
// Updates use only $set, $unset, $inc, $min, $max and $addToSet (with or without $each); capture
// turns $setOnInsert and $currentDate (HLC time, Timestamp.Time) into $set beforehand. Validate
// refuses everything else, positional paths, paths through _id or the hidden field, and paths that
// conflict within one update, with errors that name the culprit.
//
// # The semantics
//
// The document a replica ends with, once it has applied a set of ops (each distinct op, by Origin
// and Seq, counted once however often delivered), is defined sequentially (crdttest.Reference
// implements exactly this):
//
//  1. An op's field operations are: for an Insert, a $set of each top-level field except _id (an
//     insert never replaces: on an existing document it merges its fields as $set); for an Update,
//     its operators' fields; a Delete has none.
//  2. A field operation is overwritten, and ignored, when some op with a larger Timestamp deletes
//     the document or assigns ($set, $unset, or inserts as a top-level field) the same path or a
//     prefix of it ("a" overwrites "a.b"). This is last-writer-wins per field, the tombstone that
//     beats everything older, and "a $set newer than some $inc deltas wins over them".
//  3. The document exists iff its newest Insert/Update is newer than its newest Delete. It is
//     {_id} followed by the surviving field operations replayed in ascending Timestamp order (within
//     one op: an insert's fields in document order, an update's in path order, as MongoDB 5+ does),
//     each with MongoDB's meaning at that point of the replay:
//     - $set replaces the value in place or appends the field; missing embedded documents on the
//     path are created; $unset removes the field.
//     - $inc adds: a missing field counts as 0 (it takes the delta's type); int32+int32 stays int32
//     unless it overflows (int64); int+int64 is int64; anything with a double is a double.
//     - $min/$max compare with MongoDB's BSON comparison order (numbers by value across int32,
//     int64, double and decimal; then strings, documents, arrays, binary, ObjectId, bool, date,
//     ...); a missing field is set to the operand.
//     - $addToSet appends each element not already equal (by that comparison: 2 equals 2.0) to the
//     array, creating it when missing.
//     So deltas newer than the latest $set of a field still add to it, $min/$max/$addToSet act on
//     the value at their point in clock order, and a document deleted at T and updated at T' > T
//     comes back with only the fields written after T.
//  4. A field operation that cannot apply at that point — $inc of a non-number or overflowing
//     int64, $inc of a decimal, $addToSet to a non-array, any path that runs through a value that
//     is not an embedded document (including arrays: "a.0" never indexes an array) — is a no-op
//     for that field only; the op's other fields still apply. Every replica sees the same replay,
//     so the no-op is deterministic.
//
// Field order is part of the result, and identical across replicas: fields appear in the order the
// replay of step 3 creates them. Because overwritten operations are dropped before the replay, a
// field whose value is replaced by a $set (or $unset and set again) moves to the end of its
// document, where MongoDB would keep it in place; fields only touched by $inc/$min/$max/$addToSet
// and untouched fields keep their place. Documents are compared byte for byte.
//
// For histories that use each field consistently, steps 1-4 give the same values as applying every
// op in Timestamp order (only field order can differ, as just described). They give different
// values only for type confusion across levels: a field that is both the target of
// $inc/$min/$max/$addToSet and, elsewhere, a document written through dotted paths ("$max: {d: 5}"
// alongside "$set: {'d.x': 1}"), where dropping an overwritten "d.x" write changes whether "d"
// existed when the $max ran. The result is still deterministic and convergent.
//
// # Metadata
//
// Meta, stored under the hidden field MetaField ("_edgenode") of the document itself so that data
// and metadata are written in one atomic per-document write, holds what the rule above needs and
// nothing overwritten: the newest Delete (tombstone) and Insert/Update clocks; per written path the
// newest assignment (value or unset, clock) and the commutative operations newer than it; the
// highest Seq applied per origin (informational); and a Version bumped by every change, for a
// compare-and-swap write. Apply keeps exactly the non-overwritten operations, so replicas that
// applied the same ops hold Equal metadata, and the document is a function of the metadata
// (Materialize). Stored with its document (EncodeWith, DecodeMetaWith), the metadata keeps only
// the clocks of an assigned path whose value the document holds as it is (the common case), and
// copies the value only where the document shows something else (commutative ops or sub-path
// writes on top of it), so a value is stored once; Encode copies every value (the form of a
// tombstone, and of documents written by older nodes, read as before and rewritten in the new form
// by their next write).
//
// Overwritten operations are dropped at once, so metadata is bounded by the number of paths
// written, except that commutative operations ($inc, $min, $max, $addToSet) on a path that is never
// $set again accumulate. Compact(stable), given a causally stable clock (every op at or below it has
// been applied: package repl computes it from the peers' positions), folds those into the base
// value, forgets $unset records, and ignores from then on every op at or below stable as an
// already-applied duplicate. It never changes the document.
//
// A document that already exists in the database without metadata (it predates replication) is
// adopted: its fields count as assignments older than any clock reading.
package crdt
