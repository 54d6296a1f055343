// Package repl replicates the Mongo layer between nodes: every node streams
// the ops its replica core captured (package replica, which the proxy in
// package mongoproxy feeds; op log in package oplog) to every peer over the
// mesh, applies the peers' ops, keeps the compaction frontier that lets
// documents fold their commutative history, and brings new, wiped or
// lagging nodes up to date with an initial sync.
//
// Replication sees the core only through replica.Replication, given to New:
// peers' ops go in (ApplyRemote), this node's ops are read from a position
// (ReadLocal, woken by Subscribe), the compaction frontier goes back
// (SetStable), and the write gate and both halves of an initial sync are
// there too. The mesh is a Transport. The unit tests run it on an in-memory
// core (package replica/replicatest) and an in-memory transport; the
// end-to-end tests on real proxies, FerretDB and meshes.
//
// # Streaming
//
// Each node streams its own ops to each peer on mesh topic "repl" (package
// mesh: per-pair ordered, at most once, bounded queues), and relays a
// peer's ops it applied to a node that cannot hear that peer (see
// relay.go: a cut link between two live nodes, a dead origin, an old
// incarnation). A sender per peer keeps the peer's position in this node's ops
// (the highest seq it has applied: its checkpoint) and sends from there, in
// seq order, in messages of up to BatchOps ops, never more than WindowOps
// beyond the last acknowledged position (flow control: the mesh drops what
// does not fit a peer's queue, so the window keeps the queue from
// overflowing and a slow peer from being flooded).
//
// The receiver applies each origin's ops in order on a goroutine of that
// origin (replica.Replication.ApplyRemote: logged durably, then applied),
// and answers with an ack carrying its applied position. A message that
// does not follow its position (one before it was lost) is answered with a
// gap ack, and the sender goes back to the acknowledged position; when
// acks stop coming for ResendAfter (messages lost on a broken link), the
// sender does the same. A restart of either side resumes from the position
// the peer reports in its heartbeats (or the one persisted with
// replica.Replication.SetPeerAck). In the steady state nothing is sent
// twice; after a loss, what is sent again and was already applied is
// skipped by position, and applying an op twice would
// change nothing anyway (crdt.Apply is idempotent).
//
// Peers acknowledge what they applied (and so logged durably). The origin
// persists those positions and trims its log below the smallest of them,
// but never the last LogRetention of its ops (a new node syncing from a
// third node may need them); every node keeps the peers' ops it applied
// for LogRetention too, for relays. A node missing from the node map for
// ForgetPeerAfter stops holding the log back; if it comes back, its
// position is below what the log still holds, which it sees in heartbeats,
// and it resyncs.
//
// # Heartbeats and incarnations
//
// Every HeartbeatInterval a node broadcasts its origin, its frontier (below),
// its last seq, the first seq its log still holds, whether it is a synced
// replica, and its applied position for every origin. Peers learn positions
// from it (a sender's starting point, progress whose ack was lost), fold the
// clock into their own HLC (unless it runs ahead: see Clock skew), and
// compute lag.
//
// An origin is a node id plus an incarnation ("node1~lx3k9a2"): a node whose
// data folder is wiped loses its op log, and would otherwise number new ops
// from 1 again, which its peers would take for ops they already have.
// Incarnation gives the folder a new origin when it has no op log (see
// DATA_DIR/mongo-origin); a folder from before incarnations keeps the plain
// node id.
//
// # Compaction frontier (causal stability)
//
// Commutative ops ($inc, $min, $max, $addToSet) stay in a document's
// metadata until a $set of the path dominates them; crdt.Meta.Compact folds
// them into the value once they are causally stable: every op with a
// timestamp at or below the frontier has been applied on this node. Without
// it a hot counter's metadata grows with every increment (measured: 40 s
// instead of 9 s for the same run).
//
// The frontier is computed here, per node, from heartbeats: a node
// announces F (replica.Replication.Frontier: a clock reading such that all its
// ops at or below F are in its log; local writes in progress hold it back)
// with L, its last seq read after F. Once this node has applied that
// origin's ops up to L, every op of that origin at or below F is applied
// here. The frontier is the minimum of that over every origin this node
// knows, its own included, and never later than the wall clock minus
// StableMargin. F is only announced once fenced in the log (oplog.Fence),
// so a node that crashes resumes its clock above anything it announced. A
// node present in the map but not heard yet freezes the frontier; a node
// absent from the map keeps its last value until forgotten.
//
// Stability at this node is all compaction needs: compaction changes how a
// document's metadata is stored, never the document, so replicas may
// compact at different points. A snapshot copied to another node carries
// its floor, and every op at or below that floor is already in the copy.
// What this cannot cover is a node it has never heard of writing with a
// clock behind the frontier: a brand new node observes the cluster's clocks
// (heartbeats, the sync source's clock) before it takes writes, and
// StableMargin covers wall-clock skew below it. Ops that arrive below a
// frontier already used anyway are counted
// (edgenode_mongo_repl_late_ops_total) and logged as errors.
//
// # Clock skew
//
// Ops and heartbeats carry their origin's HLC reading, and the receiver
// folds it into its own clock, so that what it writes afterwards is
// ordered after what it has seen. Unbounded, that lets one peer whose
// clock runs ahead (misconfigured, or malicious with a node certificate)
// drag every node's clock forward for good, since the op log persists the
// clock (oplog.Fence, MaxTimestamp), and win every last-writer-wins
// comparison for as long as its skew lasts. So a reading more than
// mongo.max_clock_skew (mongoproxy.Options.MaxClockSkew, the replica core's
// bound) ahead of the
// receiver's wall clock is refused, whatever carries it:
//
//   - ops: the receiver applies an origin's ops up to the first one beyond
//     the bound, and refuses that one and every one after it (positions
//     are per-origin sequences: later ops cannot pass it). Nothing refused
//     is logged, applied or acknowledged: the ack carries the position
//     applied and the flag ackClockAhead; the origin keeps the ops in its
//     log (a position not acknowledged holds back trimming), waits
//     clockAheadRetry x ResendAfter, then offers one batch at a time from
//     that position. They apply as soon as the receiver's wall clock is
//     within the bound of their stamp. So an op stamped a year ahead waits
//     a year, and its origin's later ops wait behind it: a node that ran
//     with its clock far ahead replicates again, once its clock is fixed,
//     only after its data folder is wiped (a new incarnation resyncs; its
//     writes stamped in the future, which no peer accepted, are lost).
//   - heartbeats: the peer is not heard (no clock, frontier or positions
//     taken from it): it is not a sync source, and the compaction frontier
//     waits for it (metadata grows meanwhile, nothing is lost).
//   - initial sync: a source whose clock (syncBegin) runs ahead is refused
//     before anything is emptied; the next attempt prefers another source.
//   - at start: an op log whose newest timestamp is more than the bound
//     ahead of the wall clock cannot hold only readings accepted under the
//     bound (the wall clock was set back, or an earlier version accepted a
//     skewed peer): it is logged as an error and the clock resumes at the
//     bound instead, still above every reading accepted under it, so this
//     node's ops keep increasing and the frontiers it announced stay true.
//
// Every refusal is counted (edgenode_mongo_repl_clock_skew_refused_total,
// by peer and what) and logged (at most once a minute per peer) with how
// far ahead the reading is. Only clocks ahead are refused: a peer whose clock
// runs behind cannot move this one, and its own clock catches up as soon
// as it hears its peers (StableMargin covers the rest, see above).
// Readings are checked when they arrive, so delays only make them look
// older. A node takes the clock of a peer ahead of it within the bound and
// stamps its own ops with it, so the bound is the largest difference
// tolerated between any two clocks of the cluster.
//
// The default is one minute. NTP keeps servers within milliseconds of each
// other, so a healthy cluster is nowhere near it; a clock must be wrong by
// a minute (a misconfiguration, or days to weeks of an undisciplined quartz
// clock's drift) before its ops stop, and then its peers say so. It must be
// well above StableMargin (1 s; configuration requires at least 1 s): the
// frontier's design already assumes clocks agree within StableMargin, and
// a bound at or below it would refuse clocks that design accepts. And it
// is what a skewed or malicious peer can still do: push the clocks at most
// a minute ahead, which the wall clock catches up with a minute after it
// stops (the op log never persists a clock more than the bound, plus the
// fence's second, ahead), and win last-writer-wins comparisons against
// writes made up to a minute after its own.
//
// # Initial sync
//
// A node whose database is not marked as a synced replica of its op log
// (new, wiped database, wiped op log) starts with captured writes refused
// (10107 NotWritablePrimary; reads and local-only collections work) and
// runs this state machine (see sync.go): wait for an alive peer that says it
// is synced; ask it for a snapshot; it answers first with its applied vector
// (its applied position for every origin) and its clock, then with every
// replicated collection (options, indexes), document (with metadata),
// tombstone and DDL record, in numbered chunks with a window of
// acknowledgements; the node empties its replicated data when the vector
// arrives, stores the chunks, and at the end sets its op log's applied
// positions to the vector (ops of its own above it, from an intact log, are
// applied again) and marks its database synced. Streaming then takes over
// from the vector.
//
// The vector is read before the first document: documents only move
// forward, so every op at or below it is in what is copied, and an op above
// it that the copy already holds is harmless to apply again. Writes on the
// source during the copy are therefore handled by the positions, not by a
// consistent snapshot.
//
// The node stores only what it replicates itself: every collection,
// index, document, tombstone and DDL record of the snapshot is checked
// against its own mongo.replicate and mongo.local_only (never admin,
// local, config, edgenode_meta or system.* collections; edgenode_fleet only
// while it is replicated, which the node adds when the fleet's storage is
// mongo), tombstones and DDL records also by their keys. Configurations may
// differ between nodes, and a peer with a node certificate may send
// anything: what is not replicated here is not stored, counted
// (edgenode_mongo_repl_sync_refused_items_total, by peer) and logged once
// per sync naming the peer and the namespaces. Streamed ops of such
// namespaces are logged and marked applied but never written (package
// replica counts them, edgenode_mongoproxy_apply_conflicts_total with
// reason not_replicated, and logs their origin and namespace).
//
// With no synced peer after BootstrapWait, and every alive peer heard and
// unsynced (or no peer at all), the node starts the cluster's data as it
// is. Not so a node with RequirePeer (the node sets it when the mesh has
// seeds and mongo.bootstrap is off) whose op log is empty (new, or its
// data folder wiped): until it has heard some peer it waits for one,
// writes refused and Ready saying why, rather than start a new cluster
// from what may be nothing because its seeds are unreachable; once a peer
// is heard, the rule above applies with twice BootstrapWait counted from
// then, so that a first node started at the same time with bootstrap gets
// synced first and this one syncs from it (nodes started together, none
// with bootstrap, still bootstrap together). A node that finds itself behind a peer's trimmed log resyncs the same
// way, from any synced peer, with writes refused meanwhile; it never
// bootstraps. Writes are allowed after a sync once every alive peer has
// been heard (its clock observed), or after 3 s.
//
// # Lag and readiness
//
// For each origin, this node's lag is the ops it has not applied
// (announced last seq minus applied) and the time since it learned of the
// oldest of them; for each peer, the ops of this node it has not
// acknowledged and the age of the oldest. Both are on /metrics
// (edgenode_mongo_repl_lag_ops{origin}, _lag_seconds{origin},
// _peer_lag_ops{peer}, _peer_lag_seconds{peer}) and in Status (for
// /status.json, with every peer's applied position for every origin).
// edgenode_mongo_repl_delay_seconds{origin} is the distribution of apply
// time minus capture time of every applied op.
//
// Ready reports an error while the node is not a synced replica, or when
// some alive peer's ops have waited here longer than MaxLag. The choice: a
// lagging node reports itself not ready (so /readyz can take it out of DNS
// and load balancers, and clients go to a fresher node), but it keeps
// accepting writes. Refusing writes would not make its data fresher, the
// writes converge anyway, and in a multi-master cluster the node that lags
// is often the one that is cut off, where local writes are the point. Only
// the lag of alive peers counts: a dead peer has nothing to send, and must
// not make the whole cluster unready.
//
// # cron_leader
//
// Exactly one node may carry cron_leader. The node map shows it as the tag
// CronLeaderTag; when the live nodes (not dead) claiming it are not exactly
// one, every node logs a warning and edgenode_cron_leader_claims shows the
// count.
//
// # Limits
//
//   - Relays serve what they still hold: ops a node missed for longer than
//     LogRetention, from an origin that is gone, are lost to it (its
//     heartbeat check resyncs it while the origin is alive). Before wiping
//     a node, let its peers catch up (peer lag 0) all the same.
//   - Heartbeats are not relayed: a node cut off from a live origin does
//     not learn that origin's compaction frontier, so compaction waits
//     there until the link heals (metadata grows meanwhile; nothing is
//     lost).
//   - Ops and snapshot items travel in mesh messages (8 MiB at most). The
//     proxy refuses, before logging anything, a write whose op or whose
//     stored document (with its metadata) exceeds mongo.max_document_bytes
//     (7.5 MiB), so that never happens with the defaults; an op that does
//     not fit anyway (a larger limit in a mixed fleet) is logged and
//     counted, and that peer's stream stops there.
//   - Clocks must agree within StableMargin for the compaction frontier's
//     guarantee, and within mongo.max_clock_skew for ops to flow at all
//     (see above).
//   - DDL replicates as ops too (replica, crdt.DDL); a collection drop
//     deletes only what is older than it, everywhere.
package repl
