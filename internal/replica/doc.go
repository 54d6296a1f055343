// Package replica is the replica core of the Mongo layer: it owns the op
// log (package oplog), the hybrid logical clock, the convergent apply of
// ops to the local database (package crdt merges, this package reads and
// writes), DDL, tombstones, the document cache and the write gate. It
// knows nothing of the wire protocol and nothing of the network.
//
// It has two faces, both implemented by *Replica:
//
//   - Local, for the wire front-end (package mongoproxy): admit a write
//     through the write gate (Admit), capture, log and apply document
//     writes given as items (Write), drop a collection (Drop), record DDL
//     the front-end forwarded (BeginDDL, DDLTurn.Commit), and drop the
//     read-your-write cache (Forget).
//   - Replication, for package repl: apply peers' ops (ApplyRemote), read
//     this node's ops from a position (ReadLocal) when told there are new
//     ones (Subscribe), clocks and frontiers (Frontier, ObserveClock,
//     CheckClock, Fence, SetStable), positions and trimming, the write gate
//     (BlockWrites, AllowWrites), and both halves of an initial sync
//     (Snapshot; BeginSync, LoadSnapshot, FinishSync).
//
// Nothing is registered as a callback: the front-end calls in, replication
// calls in and waits on a channel. The compaction frontier, which only
// replication can compute, is a value it gives with SetStable whenever it
// moves (valid at any time; nothing is compacted before the first).
//
// # Writing one document
//
// A local write of a document:
//
//  1. takes its namespace (shared) and its document lease (below);
//  2. reads the document and its metadata (field _edgenode), or its
//     tombstone, or takes them from the cache;
//  3. stamps the op with the clock (crdt.Clock, which never goes
//     backwards and resumes above the log's newest timestamp at start),
//     lets the front-end compute it (Item.Compute) and previews the merge
//     (crdt.Apply), refusing a write whose op or stored document would
//     exceed MaxDocumentBytes;
//  4. appends the op to the op log (fsync'd, group commit, per-origin
//     sequence) BEFORE touching the database, and tells subscribers;
//  5. merges and writes data and metadata in ONE write conditional on the
//     stored metadata version (Capabilities.VersionedWrites), re-reading
//     and re-merging on conflict;
//  6. marks the op applied in the log.
//
// Writes of one document named by its _id wait for their document in a
// queue rather than on its lease alone (group.go): the writer that finds
// the document idle leads, and once it holds the lease it takes every
// write queued for the document (up to 64, and 4 MiB of ops) and runs
// steps 2-6 once for all of them, in arrival order: one read, one log
// append (one fsync), one database write. Each write is still its own op
// with its own clock, log entry, retryable-write record and outcome; one
// whose op is refused fails alone, and a document the database refuses is
// undone and each of its writes run again alone.
//
// Multi-document writes are processed in chunks of up to 64 documents: one
// log append (one fsync) per chunk; documents that did not exist are
// written with one insertMany; where the database can (BatchReads) the
// chunk's documents are read with one query. An ordered write stops at its
// first failure.
//
// Peers' ops (ApplyRemote) are logged, then applied several documents at a
// time (each a read-merge-write under its lease). An op the database
// refuses for good (a unique index, a document it cannot store) is parked
// in edgenode_meta.conflicts with a log line and
// edgenode_mongoproxy_apply_conflicts_total{reason}, and marked applied:
// replication never stalls. Operators list, show and resolve parked ops
// (Conflicts, Conflict, Resolve); a resolution is made of captured writes
// and so replicates, and every node tries its parked ops again after a
// peer's batch, dropping those that now apply (conflicts.go). An op of a namespace this node does not
// replicate is skipped the same way (reason not_replicated). Transient
// errors stop the apply; the ops stay unapplied in the log, applied again
// by the next call or at start.
//
// # Concurrency
//
// Per-document serialization is explicit: a document's lease is its turn
// to be read, merged and written. Leases are handed out by a lease table
// (leases.go) whose mutex guards only its map of keys in use, is held for
// a few instructions and never while waiting or doing I/O; a key nobody
// holds is not in the map. Several documents are leased in one call, in
// ascending key order (the one global order, so that two multi-document
// writes never wait for each other in a cycle). A lease is held across
// the database round trips of its read-merge-write, and of a local write's
// log append: that is the design, and what makes the write correct on
// FerretDB, whose updates are not atomic per document (concurrent updates
// lose writes), and what lets the cache skip the read. Namespaces have the
// same kind of table: document writes and applies hold theirs shared, DDL
// exclusively (a drop rewrites every document of its namespace).
//
// The one lock order, checked at run time in race and lockrank builds
// (lockrank.go; a goroutine that takes a turn at or below a rank it holds
// panics, naming both):
//
//	rank 0  session          a client session's turn (BeginTxn), held by a
//	                         retryable write command until it is answered
//	rank 1  write gate       shared by each captured write and DDL command,
//	                         for its whole duration; BlockWrites takes it
//	                         exclusively for an instant (a barrier)
//	rank 2  settle turn      Settle's (one at a time, taken admitted):
//	                         held while it stores the unstored ops
//	rank 3  namespace        shared: document writes, peers' applies;
//	                         exclusive: DDL (Drop, DDLTurn, peers' DDL)
//	rank 4  document leases  all of a chunk's at once, in key order
//	rank 5  leaf mutexes     clock holds, the drops map, subscribers, the
//	                         lease tables' own maps, the per-document
//	                         write queues: held for a few instructions,
//	                         nothing taken under them, no I/O
//
// A clock hold is a registration, not a turn: a local write takes one
// after its leases and before its first clock reading, and releases it
// once its ops are in the log; until then Frontier stays below its
// timestamps (every op at or below the frontier is in the log). The
// document cache (cache.go) is owned entry by entry by lease holders: only
// the holder of a document's lease reads or writes its entry (checked
// builds panic otherwise); dropping entries (Forget, a drop, a sync) needs
// no lease, since a missing entry only costs a read. The op log and the
// clock have their own internal locks, which are leaves too.
//
// No mutex that guards shared state is held across network I/O. The
// turns are held across database round trips by design: a lease for its
// read-merge-write (above), the gate (a sync.RWMutex used as a count of
// writes in flight, which BlockWrites waits out) for the whole write, and
// a namespace for the front-end's forwarded DDL command (DDLTurn), so that
// the command and its record are one step for every other writer of the
// namespace, and the settle turn while Settle stores (a second Settle
// would only store the same ops again).
//
// # Storage
//
// A live replicated document carries its metadata (per-field clocks,
// pending commutative ops, per-origin watermark, version) in the field
// _edgenode, stored as {v: version, b: BinData} (FerretDB v1 cannot store
// nested arrays, and nothing queries it but the version). The metadata
// keeps clocks, not copies of the values its document holds
// (crdt.Meta.EncodeWith): a value is stored once. Documents stored by
// older nodes (values copied) are read as they are and rewritten in the
// new form by their next write; a tombstone has no document and copies
// what it keeps. A deleted
// document is removed from its collection and its metadata kept as a
// tombstone in edgenode_meta.tombstones ({_id: docKey, ns, id, m:
// metadata}), where a late operation finds it: an op older than
// the delete stays deleted, a newer one re-creates the document with only
// the fields written after the delete. Deletion writes the tombstone before
// removing the document; re-creation inserts the document before removing
// the tombstone; a crash in between leaves both, and a live document always
// wins when read, which is correct because the op being applied is still
// unapplied in the log. Documents that existed before the proxy (no
// metadata) are adopted on their first replicated write, their fields
// counting as older than any operation. Canonical ids compare numbers by
// value, as MongoDB does (docKey).
//
// Every key the core stores (tombstone and DDL record _ids) is
// "<len(ns)>:<ns>:<id or key>", printable or the string _id's own valid
// UTF-8: storable on every backend (PostgreSQL's jsonb, under FerretDB,
// refuses a NUL) and unambiguous whatever the namespace holds. Keys of the
// first form (namespace NUL id) are converted at Open, once (the database
// records the form in edgenode_meta.repl {_id: "keys"}), and in snapshots
// from peers that still send them (keys.go, migrate.go).
//
// # Stepdowns
//
// A database error that says nothing about the write itself (network,
// timeout, no primary selectable, MongoDB's state-change codes such as
// 10107 NotWritablePrimary and 11602, or the RetryableWriteError label)
// is transient, never a refusal: the store of a logged op re-reads the
// document and writes it again, on the new primary once one is known, for
// up to Config.StoreRetry (a minute). If the primary took the write after
// all, the re-read state holds the ops and the fold changes nothing. When
// StoreRetry runs out the write's outcome is CodeNotWritablePrimary (the
// front-end answers it retryably), the op stays logged and unapplied, the
// core keeps it in its set of unstored ops (Unstored;
// edgenode_mongoproxy_unstored_ops counts them), and compaction waits.
// Settle stores them (settle.go). The front-end calls it from a loop of
// its own as soon as the database has a primary again, with no client
// write needed, and before each captured write, so that a driver's retry
// of the write finds it recorded and stored, and is not applied again.
// Settle stores only the ops that gave up (not other writers' ops in
// flight), one Settle at a time: a Settle called while another stores
// waits for it (the settle turn, below the write gate) and then stores
// what is left. A restart stores them too (the replay of unapplied ops).
//
// # Crashes
//
// Ops are marked applied in the log after their write. At Open, every op
// the log still holds as unapplied is re-applied before anything else
// runs; applying is idempotent (the metadata recognizes an op already
// merged), so an op is applied exactly once whatever the crash point. The
// crash tests stop the process at the FaultPoints (Config.Faults).
//
// # Retryable writes
//
// MongoDB's retryable writes promise that a write a driver sends again
// (same lsid, txnNumber and stmtId, after a lost reply) is applied once
// and answered as the first time. The core keeps, per client session (the
// SHA-256 of its lsid document), the highest txnNumber that recorded a
// statement and each of that txnNumber's statements' results, as records
// of the op log file (oplog.Record) written in the SAME bbolt transaction
// as the statements' ops (Item.Txn, Item.Result): once an op is durable
// its result is, so a crash between the append and the reply (kill -9)
// still finds it. Statements that logged no op (nothing matched) are
// recorded by an append of records alone (Txn.Record). A statement undone
// by a compensation loses its record in the compensating append, as
// MongoDB records only statements that succeeded. The front-end takes the
// session's turn (BeginTxn, rank 0) for the whole command, so a retry
// that arrives while the original still runs waits for it; a txnNumber
// below the session's is refused with 225 TransactionTooOld.
//
// Records live SessionTTL (30 minutes, MongoDB's
// logicalSessionTimeoutMinutes) after their session's last recorded
// statement, and a new txnNumber replaces the older one's; expired
// sessions are removed by later appends (no goroutine). Over
// RetryRecordBytes the least recently written sessions lose their results
// early but keep their header, so that a retry of them gets 217
// IncompleteTransactionHistory (what MongoDB answers once its oplog no
// longer holds the statement) instead of being applied again; only when
// headers alone exceed the bound do whole sessions go. Records never
// travel with ops: a driver retries on the server it used, peers'
// copies of an op are idempotent by origin and seq anyway, and no
// client's session id leaves the node.
//
// # Unique indexes
//
// A local write the database refuses because of a unique index other than
// _id has already been logged (and may already be on its way to peers).
// The core then logs a compensating op (restore every path the write
// touched to its previous value, or delete the document it created),
// applies both, reports the database's 11000 error for the write, and
// counts it in edgenode_mongoproxy_compensations_total. Peers converge to
// the same state. With ordered:false only that document is undone; with
// ordered:true the documents after it in the same chunk are undone too.
//
// # DDL
//
// DDL replicates as ops of kind crdt.DDL, one per change: create and drop
// carry the key "collection", createIndexes and dropIndexes one op per
// index with the key "index:<name>". Per (namespace, key), the op with the
// newest timestamp wins whatever the order of arrival; the winner is
// recorded in edgenode_meta.ddl and older ops arriving later are ignored.
// A drop is logged first, then applied as a delete of every document of
// the collection at the drop's timestamp: a document written after it (by
// clock, on any node) survives with only what was written after it;
// indexes created before it go; the collection itself is dropped when
// nothing newer remains. The newest drop of each namespace is kept and
// folded into every document of it read afterwards.
//
// # Databases
//
// Where databases differ the core asks Capabilities, chosen once at start
// (Detect, from buildInfo) or given by the caller: FerretDB v1 gets
// unconditional writes filtered on _id (its conditional update is no
// compare-and-swap, and only a filter that is exactly {_id: <string or
// ObjectId>} uses its _id index) and document-by-document reads of a
// chunk; a database that does not fsync each commit (the embedded one)
// gives a Sync hook, and the op log then keeps ops until the database has
// been synced after applying them (oplog.Options.SyncApplied).
package replica
