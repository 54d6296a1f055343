package replica

import (
	"context"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Local is the core as the wire front-end (package mongoproxy) sees it:
// client writes to replicated namespaces go in as items, outcomes come out,
// and DDL the database accepted is recorded. *Replica implements it.
type Local interface {
	// Admit lets one captured write or DDL command through the write
	// gate; done must be called once it is over. While writes are blocked
	// (Replication.BlockWrites) it returns a *BlockedError.
	Admit() (done func(), err error)
	// Write captures, logs and applies items, document writes to ns, in
	// order: the first failure stops an ordered write (later items are
	// not done), an unordered one goes on. out[i] is items[i]'s outcome.
	// Call it admitted.
	Write(ctx context.Context, ns string, items []Item, ordered bool) (out []Outcome)
	// Drop drops the replicated collection ns: logged first, then applied
	// like a peer's drop (see package documentation). It returns how many
	// indexes the collection had. Call it admitted.
	Drop(ctx context.Context, ns string) (indexes int, err error)
	// BeginDDL takes ns exclusively for a DDL command the front-end
	// forwards to the database itself (create, createIndexes,
	// dropIndexes): no document write or other DDL of ns runs until End.
	// Call it admitted.
	BeginDDL(ns string) *DDLTurn
	// Forget drops the read-your-write cache of stored documents
	// (collections were dropped or renamed behind the core's back).
	Forget()
	// BeginTxn takes a client session's turn for a retryable write
	// command (see Replica.BeginTxn). Take it before Admit.
	BeginTxn(ctx context.Context, lsid []byte, txnNumber int64) (*Txn, error)
	// Settle stores the local ops whose store gave up on a transient
	// database error (no primary for StoreRetry); see Replica.Settle.
	// Call it admitted, before the write it admits, and from a loop
	// that runs it once the database has a primary again.
	Settle(ctx context.Context) error
	// Unstored is how many local ops wait for Settle, and a channel told
	// when more do (see Replica.Unstored).
	Unstored() (n int, added <-chan struct{})
}

// Item is one document-level write of a client command.
type Item struct {
	// ID is the document's _id.
	ID bson.RawValue
	// Filter, when set, is the statement's filter, which resolved to ID
	// before the document's lease was taken: it is checked again under
	// the lease, and the item is skipped (Outcome.Done without Found) if
	// the document stopped matching. Nil when the statement names the _id.
	Filter bson.Raw
	// Compute decides the op for the document's current state (nil op:
	// nothing to write) or refuses the write with an error the client
	// gets as is. found: the document exists (and matches Filter). ts is
	// the op's clock. The core fills in the op's origin, clock, namespace
	// and _id.
	Compute func(st crdt.State, found bool, ts crdt.Timestamp) (*crdt.Op, error)
	// Txn, when set, makes the item statement StmtID of a retryable
	// write: once the item is done without error, Result(outcome) (nil:
	// record nothing) is recorded as the statement's result in the same
	// op log transaction as the item's op (see "Retryable writes").
	Txn    *Txn
	StmtID int32
	Result func(Outcome) []byte
}

// Outcome is what happened to one Item.
type Outcome struct {
	Done   bool // processed (false: not reached, or undone, after an ordered failure)
	Found  bool
	Op     *crdt.Op // the op logged (nil: nothing to write)
	Before bson.D   // document before the op (nil: absent)
	After  bson.D   // document after the op (nil: absent)
	// Err is the write's failure: Compute's own error, or an *Error.
	Err error
}

// DDLChange is one replicated DDL change a client command made: its key
// ("collection", or "index:<name>", see crdt.DDLKey) and its normalized
// command.
type DDLChange struct {
	Key string
	Cmd bson.D
}

// DDLTurn is a namespace held exclusively by the front-end for a DDL
// command it forwards to the database.
type DDLTurn struct {
	r    *Replica
	ns   string
	turn turns
}

// Commit logs the changes the database has just accepted, records them
// as the newest for their keys, and hands them to replication, before the
// client gets the answer. A crash between the database's answer and this
// leaves the change local; running the command again replicates it.
func (t *DDLTurn) Commit(ctx context.Context, changes []DDLChange) { t.r.commitDDL(ctx, t.ns, changes) }

// End gives the namespace back. Call it exactly once.
func (t *DDLTurn) End() { t.turn.release() }

// Replication is the core as replication (package repl) sees it: peers'
// ops go in, this node's ops come out as a stream read from a position,
// clocks and frontiers, the write gate that keeps an incomplete replica
// from taking writes, and both halves of an initial sync. *Replica
// implements it; package replicatest has an in-memory fake.
type Replication interface {
	// Origin is the origin id of this node's ops.
	Origin() string

	// ApplyRemote durably logs peers' ops (duplicates are ignored) and
	// applies them. An invalid op, or one stamped more than MaxClockSkew
	// ahead of the wall clock (a *ClockSkewError), fails the whole call
	// before anything is logged.
	ApplyRemote(ctx context.Context, ops []*crdt.Op) error
	// CheckClock returns a *ClockSkewError when ts is more than
	// MaxClockSkew ahead of the wall clock (ApplyRemote would refuse an op
	// carrying it).
	CheckClock(ts crdt.Timestamp) error
	// ObserveClock folds a peer's clock reading into this node's clock,
	// unless it is too far ahead (a *ClockSkewError, nothing folded).
	ObserveClock(ts crdt.Timestamp) error
	// Applied is the position up to which origin's ops are applied here.
	Applied(origin string) uint64
	// AppliedVector is Applied for every origin known (see Snapshot).
	AppliedVector() map[string]uint64

	// Subscribe returns a channel that receives a value (coalesced: at
	// most one waits) whenever ops were appended to the log (this node's)
	// or applied (peers'), and the function that unsubscribes. Read the
	// ops with ReadOps from the subscriber's own position.
	Subscribe() (notify <-chan struct{}, cancel func())
	// ReadOps returns the stored encodings (crdt.Op BSON) of origin's ops
	// after seq after, in order, at most maxOps of them and about
	// maxBytes (at least one). None: nothing there (yet, or any more:
	// compare FirstSeq for this node's own ops). For this node's origin
	// that is every op it logged; for a peer's, the ops it applied and
	// still keeps (see TrimBelow), which it may relay.
	ReadOps(origin string, after uint64, maxOps, maxBytes int) ([][]byte, error)
	// LocalOp returns this node's op seq (nil if the log no longer has it).
	LocalOp(seq uint64) (*crdt.Op, error)
	// LastSeq is the seq of this node's newest op; FirstSeq the oldest
	// one the log still holds (0: none).
	LastSeq() uint64
	FirstSeq() uint64

	// PeerAcks are the peers' durably recorded positions in this node's
	// ops; SetPeerAck records one (it never moves back), RemovePeer
	// forgets a peer gone for good.
	PeerAcks() map[string]uint64
	SetPeerAck(peer string, seq uint64) error
	RemovePeer(peer string) error
	// TrimBelow deletes ops nobody needs any more (this node's: applied
	// and acknowledged by every known peer; a peer's: applied), keeping
	// each origin's ops above keep[origin] in any case.
	TrimBelow(keep map[string]uint64) (removed int, err error)

	// Frontier is a clock reading F such that every op this node has
	// stamped or will stamp at or below F is already in the log (local
	// writes in progress hold it back).
	Frontier() crdt.Timestamp
	// MaxTimestamp is the newest timestamp the log holds durably; Fence
	// raises it to at least ts (the clock resumes above it after a crash).
	MaxTimestamp() crdt.Timestamp
	Fence(ctx context.Context, ts crdt.Timestamp) error
	// SetStable gives the compaction frontier: every op, from any node,
	// stamped at or below ts has been applied here. From then on every
	// document write folds commutative ops at or below it into the value
	// (crdt.Meta.Compact). Valid at any time; until the first call nothing
	// is compacted.
	SetStable(ts crdt.Timestamp)

	// BlockWrites makes Admit refuse captured writes and DDL with reason,
	// and waits for those in progress. AllowWrites undoes it;
	// WritesBlocked is the reason ("" when accepted).
	BlockWrites(reason string)
	AllowWrites()
	WritesBlocked() string
	// SyncedOrigin is the origin recorded in the database by the last
	// completed sync ("" if none): the database is a complete replica of
	// this node's op log when it equals Origin.
	SyncedOrigin(ctx context.Context) (string, error)

	// Snapshot emits every replicated collection (options, indexes),
	// document (with metadata), tombstone and DDL record, in that order.
	// Take AppliedVector first: see package repl.
	Snapshot(ctx context.Context, emit func(SnapshotItem) error) error
	// BeginSync empties this database of everything replicated before a
	// snapshot is loaded (block writes first, apply nothing until
	// FinishSync); LoadSnapshot stores items of what this node replicates
	// and returns the others; FinishSync makes the log's applied positions
	// the vector, re-applies this node's own ops above it and marks the
	// database synced.
	BeginSync(ctx context.Context) error
	LoadSnapshot(ctx context.Context, items []SnapshotItem) (refused []RefusedItem, err error)
	FinishSync(ctx context.Context, vector map[string]uint64) error
}

// SnapshotKind says what a SnapshotItem carries.
type SnapshotKind byte

// The kinds of SnapshotItem, in the order Snapshot emits them.
const (
	SnapCollection SnapshotKind = 'c' // Doc: listCollections options of NS
	SnapIndex      SnapshotKind = 'i' // Doc: an index specification (listIndexes) of NS
	SnapDoc        SnapshotKind = 'd' // Doc: a stored document of NS, metadata included
	SnapTombstone  SnapshotKind = 't' // Doc: a tombstone record (NS empty)
	SnapDDL        SnapshotKind = 'r' // Doc: a DDL record (NS empty)
)

// SnapshotItem is one element of a snapshot.
type SnapshotItem struct {
	Kind SnapshotKind
	NS   string
	Doc  bson.Raw
}

// RefusedItem is a snapshot item LoadSnapshot did not store.
type RefusedItem struct {
	Kind SnapshotKind
	NS   string // its namespace (for a tombstone or DDL record, the one it claims)
	Why  string
}

var (
	_ Local       = (*Replica)(nil)
	_ Replication = (*Replica)(nil)
)
