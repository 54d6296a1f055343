// Package backup takes a consistent copy of a node's Mongo replica and
// seeds a new or wiped node from it, so that the node joins its cluster
// with a delta instead of a full initial sync.
//
// # What a backup holds
//
// Exactly what an initial sync carries (package repl): the node's applied
// vector, read first, then its snapshot (replica.Replication.Snapshot:
// every replicated collection with its options and indexes, every document
// with its metadata, every tombstone and DDL record). The snapshot is read
// while writes go on, so it may hold ops above the vector; it never lacks
// one at or below it. Documents only move forward: a node seeded from it
// and handed every op above the vector converges (applying an op twice
// changes nothing).
//
// # Taking one
//
// The node serves the stream on its admin listener, GET /v1/mongo/backup,
// with the admin token (Serve); the node keeps serving clients meanwhile.
// The stream is
//
//	"EDGEBK1\n"
//	record 'H': JSON Header (node, origin, vector, clock, time)
//	records 'c' 'i' 'd' 't' 'r': snapshot items (kind, namespace, BSON)
//	record 'E': JSON Trailer (counts and the SHA-256 of every byte before it)
//
// each record being its kind byte, a uvarint length and the payload. A
// record 'X' carries an error text instead of the trailer when the node
// fails midway. A stream without its trailer was cut and is refused.
//
// Take reads the stream and writes a backup to a Store (a folder or an S3
// prefix): parts of about PartBytes of items each, gzip-compressed, then
// the manifest (manifest.json) last, which names every part with its size,
// item count and SHA-256, and carries its own SHA-256. A backup without a
// manifest is incomplete and never restored.
//
// # Restoring one
//
// Restore first reads every part and checks it against the manifest
// (sizes, checksums, item counts), then, only if all of it is sound,
// empties the node's replicated data (BeginSync), loads the items
// (LoadSnapshot), makes the op log's applied positions the backup's vector
// and marks the database synced (FinishSync) under the node's new
// incarnation, and raises the op log's clock to the backup's (Fence). A
// part that changed between the check and the load stops the load before
// FinishSync: the database is then not marked synced, and the node makes a
// full initial sync when it starts (or the restore is run again).
//
// When the node starts, its peers stream every op above the vector, from
// their own logs or relayed (package repl keeps every origin's ops for
// LogRetention). Of a backup older than what the peers still keep, a live
// origin's trimmed log is caught by the heartbeat check (its log starts
// above the node's position) and the node resyncs fully, as a node back
// from a long absence does; but the ops of an origin gone since (the
// restored node's previous incarnation among them) that every peer trimmed
// are lost to it. The restore command therefore refuses a backup older
// than mongo.log_retention unless forced.
package backup
