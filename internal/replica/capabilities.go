package replica

import (
	"context"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// Capabilities is what the core may rely on from the database: where
// databases differ, the core asks this value and nothing else. Detect
// chooses it once at start; tests may give one (mongoproxy.Options).
type Capabilities struct {
	// VersionedWrites: a write conditional on the stored metadata version
	// ({_id, _edgenode.v}) is an atomic compare-and-swap, and the database
	// uses its _id index for such a filter (MongoDB). Without it (FerretDB
	// v1: its conditional update reads, compares and writes in separate
	// steps, so concurrent updates of one document lose writes, and it
	// uses its _id index only for a filter that is exactly {_id: <string or
	// ObjectId>}) the core's writes filter on _id alone: the document
	// lease is what serializes them, which the core does on every database
	// anyway.
	VersionedWrites bool
	// BatchReads: a {_id: {$in: [...]}} query uses the _id index, so a
	// multi-document write reads its documents (and their tombstones) with
	// one query each (MongoDB). Without it (FerretDB v1 scans the
	// collection for it) documents are read one by one. (FerretDB 1.24
	// does not push $in down to its backend at all: on PostgreSQL a $in of
	// 64 _ids over 10,000 documents took seconds, as every document is
	// fetched and filtered in FerretDB; and its {_id: v} is a scan too
	// unless PostgreSQL has the index of testkit.Postgres.IndexIDs.)
	BatchReads bool
	// Sync, when set, makes every database write completed before the call
	// durable (the embedded database does not fsync each commit): the op
	// log then keeps ops until the database holds them durably
	// (oplog.Options.SyncApplied), and an initial sync is made durable
	// before the log says it is applied. Nil: writes the database
	// acknowledged are durable.
	Sync func() error
}

// Detect asks the database what it is (buildInfo): FerretDB announces
// ferretdbVersion and gets neither VersionedWrites nor BatchReads;
// anything else (or a database that does not answer buildInfo) is taken
// for MongoDB. Sync is left to the caller, who knows how the database
// stores its data.
func Detect(ctx context.Context, client *mongo.Client) Capabilities {
	bi, err := client.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Raw()
	ferret := err == nil && bi.Lookup("ferretdbVersion").Type != 0
	return Capabilities{VersionedWrites: !ferret, BatchReads: !ferret}
}

// FaultPoint names a point of the core's write path where a test may stop
// the process (the crash tests kill it there and check what a restart
// recovers).
type FaultPoint string

// The fault points.
const (
	// FaultAfterAppend: ops are durable in the log, not yet applied.
	FaultAfterAppend FaultPoint = "after-append"
	// FaultAfterApply: ops are applied to the database, not yet marked
	// applied in the log.
	FaultAfterApply FaultPoint = "after-apply"
)

// FaultHook is called at every FaultPoint. It exists for tests, which
// set it through mongoproxy.Options.Faults; it is nil in production.
type FaultHook func(FaultPoint)
