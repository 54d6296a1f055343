// Package mongoproxy is the multi-master Mongo layer's front door: a MongoDB
// wire-protocol proxy between the application and its local database that
// captures every write to a replicated collection as an operation, logs it
// durably, and applies it convergently.
//
// # Wire
//
// Each client connection gets its own upstream connection, so
// authentication, cursors, sessions and read preferences pass through
// untouched. Messages are decoded by package wire (strict lengths, CRC-32C
// checksums, BSON validated recursively). Everything the proxy does not
// intercept is forwarded byte for byte. The proxy never offers compression:
// `compression` is removed from the client's hello/isMaster, and an
// OP_COMPRESSED message (or a legacy OP_INSERT/OP_UPDATE/OP_DELETE, which
// would bypass capture) closes the connection with a log line. Over legacy
// OP_QUERY only the handshake and authentication commands are accepted (as
// in MongoDB 6+); other OP_QUERY commands get error 352. A malformed message
// closes that client's connection with a log line and touches no other.
//
// Every message forwarded is answered before the client's next one is
// taken: a client message with moreToCome (an unacknowledged write) goes
// upstream without the flag and its answer is read and dropped. FerretDB
// answers such messages anyway, and an answer left unread would be taken
// for the next command's; the proxy's own questions on the client's
// connection (privileges, below) need it quiet, too. The first reply to a
// forwarded message must answer its request id, or the connection closes.
//
// A client message is read into a buffer that grows as its bytes arrive
// (to at most twice what was received, plus 64 KiB), not to the length it
// announces. Once its first byte has arrived the whole message must arrive
// within Options.MessageTimeout (30s), and the client must take each reply
// within it too; a connection that sends nothing for Options.IdleTimeout
// (30 minutes) is closed, except the node's internal ones. Either way
// edgenode_mongoproxy_client_timeouts_total{reason} counts it.
//
// Replies are rewritten only when they must be: every document field named
// _edgenode (crdt.MetaField), at any depth, is removed from replies (find and
// aggregate batches, getMore, findAndModify values, change events), so the
// metadata is never visible; the proxy's database edgenode_meta is removed
// from listDatabases. A reply that does not contain the bytes "_edgenode"
// is relayed without being parsed.
//
// # What is captured
//
// On replicated namespaces (Options.Replicate minus Options.LocalOnly;
// never admin, local, config, edgenode_meta or system.*), insert, update,
// delete and findAndModify are executed by the proxy itself. A statement
// whose filter is exactly {_id: v} names its document; any other filter is
// first resolved to _ids with a find on this node (with the statement's
// sort, hint, collation and let), then each document is re-read with the
// filter under its lock, and skipped if it stopped matching. For each
// document the proxy:
//
//  1. takes a striped lock keyed by namespace and canonical _id (numbers
//     compare by value as in MongoDB), so its own read-modify-writes of one
//     document never interleave;
//  2. reads the document and its hidden metadata (or its tombstone);
//  3. computes the operation: origin node, HLC timestamp (crdt.Clock, which
//     never goes backwards; at start it resumes above the log's newest
//     timestamp), namespace, _id and a normalized operator document
//     ($currentDate becomes $set of the HLC's time; $setOnInsert and the
//     filter's equality fields become $set only when the upsert creates
//     the document);
//  4. appends it to the op log (package oplog: fsync'd, group commit,
//     per-origin sequence) BEFORE touching the database;
//  5. merges it with crdt.Apply and writes data and metadata in ONE write
//     conditional on the stored metadata version (compare-and-swap,
//     re-read and re-merged on conflict);
//  6. answers as MongoDB would: n, nModified (documents whose content
//     changed), upserted [{index, _id}], writeErrors with MongoDB codes
//     (11000 for an insert of an existing _id, 14 for $inc on a
//     non-number, 28 for a path through a scalar, 40 for conflicting
//     paths, 66 for _id), ordered/unordered semantics, and findAndModify's
//     lastErrorObject and value (new, upsert, remove, fields).
//
// Multi-document statements are processed in groups of up to 64 documents:
// one log append (one fsync) per group, locks taken in stripe order. An
// unacknowledged write (w:0, moreToCome) is executed the same way and not
// answered.
//
// The merge rules (last writer wins per field for $set/$unset with the node
// id breaking ties; $inc deltas add; a $set wins over older deltas; $min,
// $max, $addToSet; insert idempotent by _id, merging as $set; delete
// tombstones that win over older operations only) are documented in package
// [github.com/edgenode/edgenode/internal/mongoproxy/crdt], which this
// package applies and never reimplements.
//
// The proxy keeps the stored state of recently written documents in memory
// (Options.DocCache), so consecutive writes to a hot document skip the read.
// This, like the per-document locks, assumes the proxy is the only writer of
// its replicated collections, which it must be anyway for them to replicate.
//
// # Authentication and privileges
//
// Captured writes and DDL are performed by the proxy with its own
// credentials, so when the upstream URI carries credentials (the database
// enforces authentication) the proxy checks the client itself before
// performing them:
//
//   - The connection must be authenticated: the database accepted an
//     authentication command on it (saslStart/saslContinue ending with
//     done:true, authenticate, or a hello/isMaster whose
//     speculativeAuthenticate completed, over OP_MSG or OP_QUERY), judged
//     by the reply to that very command (its responseTo is checked) and
//     nothing else. Every authentication command, and logout, first drops
//     the connection's authentication and privileges: until the database
//     accepts the new one there is none. An authentication command sent
//     with moreToCome (which asks for no reply) closes the connection with
//     a log line: it has no legitimate use, and its outcome could not be
//     judged. Otherwise the write gets error 13 "command X requires
//     authentication".
//   - The client's user must hold the privileges the write needs on its
//     namespace, as MongoDB defines them: insert; update (and insert for
//     an upsert); delete needs remove; findAndModify find plus update or
//     remove (and insert for an upsert); create createCollection,
//     createIndexes createIndex, dropIndexes dropIndex, drop
//     dropCollection, dropDatabase dropDatabase on the database. The
//     proxy asks the database over the client's own upstream connection,
//     so the answer is about the client's identity: connectionStatus
//     {showPrivileges: true}, with a request id of the proxy's, its reply
//     read and never relayed, while nothing of the client's is in flight
//     there. It reads authInfo.authenticatedUserPrivileges (resources
//     {db, collection}, {cluster: true}, {anyResource: true}, with MongoDB's
//     matching rules) and caches them for the connection until its next
//     authentication command or logout (a role granted or revoked meanwhile
//     counts from the client's next connection or authentication). A
//     missing privilege is error 13 naming the action and the namespace.
//     A database without a role model, FerretDB among them, answers
//     without authenticatedUserPrivileges: the proxy then lets every
//     authenticated user write (logged once at Info per start), which is
//     what that database itself would do.
//
// Reads and every command the proxy forwards are judged by the database
// itself, on the client's own connection and identity. Without
// credentials in the upstream URI nothing is checked: the database lets
// anyone do anything anyway.
//
// # Reserved databases
//
// The database edgenode_fleet holds the fleet's secrets (ACME account key,
// certificate private keys, TLS session-ticket keys, which package certs
// keeps in edgenode_fleet.tls through this proxy so that they replicate).
// Only internal connections (Proxy.DialInternal, an in-memory pipe the
// node's own client dials; no listener gives it) may name it; they count
// as authenticated with every privilege. For every other connection any
// command whose $db is edgenode_fleet (or the same name in another case) is
// refused with error 13 naming it — reads, getMore and killCursors,
// writes, DDL, listCollections, listIndexes, dbStats, explain, everything
// — and so is a command that names it from another database:
// renameCollection from or to it, dataSize and the sharding commands that
// take a namespace, aggregate (and views, and explain of an aggregate)
// with $lookup, $graphLookup or $unionWith reading from it or $out or
// $merge writing to it, searched through the pipelines nested in $lookup,
// $unionWith and $facet, mapReduce output into it, bulkWrite and applyOps
// naming it. listDatabases does not show it, and a cluster-wide change
// stream ($changeStream with allChangesForCluster) gets a $match that
// leaves out its events. The proxy's own database edgenode_meta stays
// readable (its conflicts are for operators to inspect: find, getMore,
// count, distinct, aggregate, the list and stats commands, explain) and
// refuses every other command, and renameCollection, $out, $merge or
// mapReduce into it from another database; listDatabases does not show it
// either.
//
// # What is refused
//
// On replicated collections these get a MongoDB error naming the operator
// and the escape hatch (mark the collection local-only in mongo.local_only):
// replacement documents (update without operators, including findAndModify
// and replaceOne), $push, $pull, $pop, $pullAll, $rename, $bit, $mul,
// pipeline updates, positional paths ($, $[], $[id]), arrayFilters, paths
// through arrays, $inc with decimal128, multi-document transactions
// (startTransaction or autocommit:false), aggregate $out/$merge into a
// replicated collection, the bulkWrite command, renameCollection and
// mapReduce with an output collection. Writes naming _edgenode, at any
// depth, are refused. So is a write whose op, or whose document as stored
// (fields plus metadata), exceeds Options.MaxDocumentBytes: error 10334
// BSONObjectTooLarge, nothing logged, since replication could not carry it. Refusals of a statement are writeErrors (code 2
// BadValue, or 9 FailedToParse for what MongoDB itself cannot parse);
// refusals of a whole command are command errors with code 2.
//
// # DDL
//
// Index and collection DDL on replicated namespaces replicates as ops of
// kind crdt.DDL, one per change: create and drop carry the key
// "collection", createIndexes and dropIndexes one op per index with the key
// "index:<name>". Per (namespace, key), the op with the newest timestamp
// wins whatever the order of arrival; the winner is recorded in
// edgenode_meta.ddl and older ops arriving later are ignored. create,
// createIndexes and dropIndexes are forwarded to the database (the client
// gets its own answer) and logged once it succeeded; a crash in between
// leaves the change local (running it again replicates it). A dropIndexes
// of "*" or of a key pattern is resolved to index names first.
//
// drop is executed by the proxy: logged first, then applied like a peer's
// drop, as a delete of every document of the collection at the drop's
// timestamp. A document written after it (by clock, on any node) survives
// with only what was written after it, exactly as after a per-document
// delete; indexes created before it go; the collection itself is dropped
// when nothing newer remains. The newest drop of each namespace is kept and
// folded into every document of it read afterwards, so an op older than the
// drop that arrives later changes nothing. dropDatabase drops the
// database's replicated collections that way, then is forwarded.
// Concurrent conflicting DDL (two nodes creating the same index name with
// different keys) ends with the newest everywhere; an index the database
// refuses to build is parked in edgenode_meta.conflicts.
//
// # Replication hooks
//
// Package repl streams the op log between nodes. The proxy gives it: the
// op log (OpLog), a clock frontier (Frontier: local writes in progress hold
// it back, so every op at or below it is already in the log), clock
// observation bounded by Options.MaxClockSkew (ObserveClock, CheckClock;
// ApplyRemote refuses ops stamped beyond it), notifications of local
// appends, a write gate (BlockWrites,
// Options.HoldWrites: captured writes and DDL get 10107 NotWritablePrimary
// while a node is not a complete replica), and the two halves of an initial
// sync (AppliedVector and Snapshot on the source; BeginSync, LoadSnapshot
// and FinishSync on the new node; LoadSnapshot stores only the namespaces
// this node replicates), plus the marker that the database is a synced
// replica of this op log (SyncedOrigin, MarkSynced).
//
// Peers' ops are applied several documents at a time (each still one
// read-merge-write under its document's lock).
//
// # Storage
//
// A live replicated document carries its metadata (per-field clocks,
// pending commutative ops, per-origin watermark, version) in the field
// _edgenode. A deleted document is removed from its collection and its
// metadata kept as a tombstone in edgenode_meta.tombstones
// ({_id: "<ns>\x00<canonical id>", ns, id, m: metadata}), where a late
// operation finds it: an op older than the delete stays deleted, a newer
// one re-creates the document with only the fields written after the
// delete. Deletion writes the tombstone before removing the document;
// re-creation inserts the document before removing the tombstone; a crash
// in between leaves both, and a live document always wins when read, which
// is correct because the op being applied is still unapplied in the log.
// Documents that existed before the proxy (no metadata) are adopted on
// their first replicated write, their fields counting as older than any
// operation.
//
// # Crashes
//
// Ops are marked applied in the log after their write. At Start, every op
// the log still holds as unapplied is re-applied before the listener
// opens; applying is idempotent (the metadata recognizes an op already
// merged), so an op is applied exactly once whatever the crash point.
//
// # Unique indexes
//
// A local write the database refuses because of a unique index other than
// _id has already been logged (and may already be on its way to peers).
// The proxy then logs a compensating op (restore every path the write
// touched to its previous value, or delete the document it created),
// applies both, answers the client with the database's 11000 error, and
// counts it in edgenode_mongoproxy_compensations_total. Peers converge to
// the same state. With ordered:false only that document is undone; with
// ordered:true the documents after it in the same group are undone too.
//
// A peer's op (or an op replayed at start) that the local database refuses
// for good — typically two nodes creating different documents with the same
// natural key under a unique index — is never retried forever: it is
// parked in edgenode_meta.conflicts ({_id: "origin:seq", ns, id, reason,
// error, at, op}), logged at WARN, counted in
// edgenode_mongoproxy_apply_conflicts_total{reason}, and marked applied, so
// replication never stalls. The replicas then differ on that document until
// an operator resolves it (for example by deleting one of the two documents
// through the proxy, which replicates); nothing is silently dropped.
// A peer's op for a namespace this node does not replicate (the nodes'
// replicate/local_only settings differ) is skipped the same way, counted
// with reason "not_replicated". Transient database errors stop the apply; the ops stay unapplied in the
// log and are applied by the next ApplyRemote or at restart.
//
// # FerretDB
//
// The embedded database (package embedded) and the tests use FerretDB v1
// with SQLite. Where it differs from MongoDB the proxy relies only on what
// both do:
//
//   - FerretDB v1 is not atomic per document: concurrent updates of one
//     document lose writes (its update reads, computes and writes back in
//     separate steps), and a conditional update is no compare-and-swap.
//     The proxy serializes its own writes per document with the striped
//     locks, so correctness through one proxy does not depend on the
//     database; the version-conditional write still protects against other
//     writers on MongoDB.
//   - It uses its _id index only for a filter that is exactly {_id: <string
//     or ObjectId>}; any other filter (numeric _ids, {_id, other: ...},
//     $in) scans the collection. On FerretDB (detected with buildInfo) the
//     proxy's conditional write therefore filters on _id alone (the
//     condition would not be atomic there anyway; the stripe lock is what
//     serializes) and multi-document chunks read document by document.
//   - It cannot store nested arrays (hence the BinData metadata), and
//     refuses field names containing '.' or starting with '$' (MongoDB 5+
//     accepts some); the proxy refuses those on replicated collections.
//   - A unique-index violation on update is reported as an internal error
//     mentioning "UNIQUE constraint failed" rather than 11000; the proxy
//     recognizes it and answers 11000.
//   - It does not implement collation; a statement with one gets FerretDB's
//     error back as a write error.
//   - Its duplicate-key message does not name the index; the proxy passes
//     the database's message through for unique-index errors and builds
//     MongoDB's own for _id duplicates it detects itself.
//   - It has no oplog, change streams or transactions, none of which the
//     proxy needs.
//   - Its lookups by _id use a SQL expression its own _id index does not
//     cover, so they scan the collection; package embedded adds the index
//     they need (see embedded/idindex.go).
//   - The embedded database runs SQLite with synchronous=NORMAL (a commit
//     survives a process crash, not a power loss); Options.SyncDatabase
//     makes the op log keep every op until the database has been fsync'd
//     after applying it.
package mongoproxy
