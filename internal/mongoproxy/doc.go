// Package mongoproxy is the multi-master Mongo layer's front door: a MongoDB
// wire-protocol proxy between the application and its local database. It
// accepts clients, decodes their commands, and decides for each: forward
// it untouched, refuse it, or capture it. Captured writes go to the replica
// core (package replica, through replica.Local), which logs each one as an
// operation and applies it convergently; package repl replicates the core's
// op log between nodes. This package holds no replication knowledge.
//
// Start connects to the database, opens the replica core (Replica returns
// it, for replication) and listens; Shutdown closes them in reverse.
//
// # The server the driver sees
//
// The application connects to the proxy as to MongoDB:
// mongodb://HOST:27018/, or mongodb://HOST:27018/?replicaSet=edgenode
// (Options.SetName). hello and isMaster are answered as the proxy itself,
// a one-member replica set whose member is the address the client reached
// it at (Options.Advertise), with nothing of the upstream's members (see
// hello.go for what is kept, what is dropped and why).
//
// # Upstream
//
// Options.Upstream is any MongoDB URI: one server, a replica set (several
// hosts, replicaSet=), mongos, TLS options, mongodb+srv://, any
// authentication mechanism. The proxy's own driver client does server
// discovery and monitoring; the proxy follows its topology events
// (upstream.go). Each client connection is dialed to the current primary;
// a connection whose member stopped being primary is closed between two
// commands, so its driver reconnects (to the new primary) and retries a
// retryable operation. A write in flight on a primary that steps down gets
// the member's own answer (10107 NotWritablePrimary with the
// RetryableWriteError label). A captured write whose database write is in
// flight at a stepdown is already logged: the core writes it again on the
// new primary and the client gets its success; only if no primary is known
// for a minute (replica.DefaultStoreRetry) does it get 10107 with the
// label. The op stays logged (edgenode_mongoproxy_unstored_ops counts it)
// and is stored as soon as a primary is known again, by the proxy's settle
// loop (settle.go: one goroutine, started by Start and stopped by
// Shutdown, that waits for the upstream's topology to show a primary and
// retries with a backoff), and in any case before the next captured write
// runs, so that the driver's retry is answered from its record and finds
// the op stored (see package replica, "Stepdowns"). While no primary is
// known, new connections
// wait up to 10s for one and then have their first command answered with
// error 133 naming the cause, captured writes get 10107 with
// RetryableWriteError, Proxy.Ready fails, and
// edgenode_mongoproxy_upstream_primary_known is 0. Reads whose
// $readPreference allows a secondary may go to one (reads.go).
//
// # Wire
//
// Each client connection gets its own upstream connection, so
// authentication, cursors and sessions pass through untouched. Messages are decoded by package wire (strict lengths, CRC-32C
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
// delete and findAndModify are executed by the proxy through the replica
// core. A command is decoded once into a typed value (writes.go: documents
// prepared, update documents validated, statements parsed), then, after
// the privilege check and the core's write gate (Admit; 10107
// NotWritablePrimary while the node is not a complete replica), run
// (capture.go): a statement whose filter is exactly {_id: v} names its
// document; any other filter is first resolved to _ids with a find on this
// node (with the statement's sort, hint, collation and let), and the core
// re-reads each document with the filter under its lease and skips it if
// it stopped matching. For each document the front-end gives the core the
// function that computes the op from the document as stored: a normalized
// operator document ($currentDate becomes $set of the op's clock time;
// $setOnInsert and the filter's equality fields become $set only when the
// upsert creates the document), or MongoDB's error for an operator that
// cannot apply to the document as it is (14 for $inc on a non-number, 28
// for a path through a scalar, 11000 for an insert of an existing _id).
// The core logs and applies it (see package replica for how, and in what
// order of locks); the proxy answers as MongoDB would: n, nModified
// (documents whose content changed), upserted [{index, _id}], writeErrors
// with MongoDB codes (40 for conflicting paths, 66 for _id, ...),
// ordered/unordered semantics, and findAndModify's lastErrorObject and
// value (new, upsert, remove, fields). An unacknowledged write (w:0,
// moreToCome) is executed the same way and not answered.
//
// The merge rules (last writer wins per field for $set/$unset with the node
// id breaking ties; $inc deltas add; a $set wins over older deltas; $min,
// $max, $addToSet; insert idempotent by _id, merging as $set; delete
// tombstones that win over older operations only) are documented in package
// [github.com/edgenode/edgenode/internal/mongoproxy/crdt], which the core
// applies and never reimplements.
//
// The core keeps the stored state of recently read or written documents in
// memory, bounded by bytes (Options.DocCacheBytes), so consecutive writes
// to a hot document, and a peer's ops for a cached one, skip the read.
// This assumes the proxy is the only writer of its replicated collections,
// which it must be anyway for them to replicate. A forwarded drop or
// dropDatabase drops that cache.
//
// # Retryable writes
//
// A captured write that carries lsid and txnNumber (a driver's retryable
// write) is run holding its session's turn in the core (retry.go,
// replica.BeginTxn); a statement already recorded for that lsid and
// txnNumber is answered from its record and not applied again: an insert
// counts in n, an update its n, nModified and upserted _id, a delete its
// n, and findAndModify returns its whole first reply (the same pre- or
// post-image). Statement ids are the command's stmtIds, or the
// statements' positions; findAndModify is statement 0. Each statement run
// records its result in the op log transaction of its op (see package
// replica, "Retryable writes"), so a retry after a lost reply, or after a
// kill -9 of the proxy once the op was logged, finds it. A txnNumber below
// the session's newest gets 225 TransactionTooOld; multi:true updates and
// limit:0 deletes with a txnNumber get 72 InvalidOptions, as MongoDB
// refuses to retry them. The records are this node's: a driver retries on
// the server it used, so they do not travel to peers. A session belongs
// to its user, as in MongoDB: with authentication the records are keyed
// by the lsid and the users connectionStatus names, so another user who
// sends the same lsid has a session of its own. The client's lsid
// and txnNumber never reach the database for captured writes (the core
// writes new commands, with the proxy's own sessions).
//
// Writes the proxy forwards (local-only collections) go upstream byte for
// byte, lsid and txnNumber included, and the proxy records nothing for
// them. A MongoDB replica set then keeps its own records, so retries of
// them are applied once there. FerretDB 1.24.2 accepts lsid and txnNumber
// and ignores both: a resent forwarded write is applied again, and an
// older txnNumber is not refused (TestRetryForwardedFerretDB pins this).
// A standalone mongod refuses a txnNumber (error 20), and the proxy
// presents itself as a replica set, so drivers send one: run MongoDB as a
// replica set (even of one member) behind the proxy, which production
// deployments do anyway.
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
// BSONObjectTooLarge, nothing logged, since replication could not carry
// it. Refusals of a statement are writeErrors (code 2 BadValue, or 9
// FailedToParse for what MongoDB itself cannot parse); refusals of a whole
// command are command errors with code 2.
//
// # DDL
//
// Index and collection DDL on replicated namespaces replicates as ops of
// kind crdt.DDL (see package replica, "DDL"). create, createIndexes and
// dropIndexes are forwarded to the database (the client gets its own
// answer) with the namespace held exclusively in the core (DDLTurn), and
// committed to the core once the database accepted them; a crash in
// between leaves the change local (running it again replicates it). A
// dropIndexes of "*" or of a key pattern is resolved to index names first.
// drop is executed by the core (logged first, then applied like a peer's
// drop: only what is older than it goes, everywhere); dropDatabase drops
// the database's replicated collections that way, then is forwarded.
// Concurrent conflicting DDL (two nodes creating the same index name with
// different keys) ends with the newest everywhere; an index the database
// refuses to build is parked in edgenode_meta.conflicts.
//
// # FerretDB
//
// The embedded database (package embedded) and the tests use FerretDB v1
// with SQLite. Where it differs from MongoDB the proxy relies only on what
// both do, and where the replica core must know the difference it asks
// replica.Capabilities, detected at Start from buildInfo (or given in
// Options.Capabilities):
//
//   - FerretDB v1 is not atomic per document: concurrent updates of one
//     document lose writes (its update reads, computes and writes back in
//     separate steps), and a conditional update is no compare-and-swap.
//     The core serializes its own writes per document with document
//     leases, so correctness through one proxy does not depend on the
//     database; the version-conditional write still protects against other
//     writers on MongoDB (Capabilities.VersionedWrites).
//   - It uses its _id index only for a filter that is exactly {_id: <string
//     or ObjectId>}; any other filter (numeric _ids, {_id, other: ...},
//     $in) scans the collection. On FerretDB the core's conditional write
//     therefore filters on _id alone (the condition would not be atomic
//     there anyway; the lease is what serializes) and multi-document
//     chunks read document by document (Capabilities.BatchReads).
//   - It cannot store nested arrays (hence the core's BinData metadata),
//     and refuses field names containing '.' or starting with '$' (MongoDB
//     5+ accepts some); the proxy refuses those on replicated collections.
//   - A unique-index violation on update is reported as an internal error
//     mentioning "UNIQUE constraint failed" rather than 11000; the core
//     recognizes it and reports 11000.
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
//     (Capabilities.Sync) makes the op log keep every op until the
//     database has been fsync'd after applying it.
package mongoproxy
