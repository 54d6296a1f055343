package embedded

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// The _id lookup index appears on every collection table, is used by
// FerretDB's lookup by _id, stays invisible to listIndexes, and comes back
// for a collection dropped and created again.
func TestIDLookupIndex(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	c, err := mongo.Connect(options.Client().ApplyURI(s.URI()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Disconnect(ctx) }()
	coll := c.Database("shop").Collection("orders")
	for round := range 2 {
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "o1"}}); err != nil {
			t.Fatal(err)
		}
		plan := waitPlan(t, filepath.Join(dir, "shop.sqlite"))
		if !strings.Contains(plan, idIndexSuffix) {
			t.Fatalf("round %d: lookup by _id does not use the index: %s", round, plan)
		}
		specs, err := coll.Indexes().ListSpecifications(ctx)
		if err != nil || len(specs) != 1 || specs[0].Name != "_id_" {
			t.Fatalf("listIndexes: %v %v", specs, err)
		}
		var got bson.M
		if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "o1"}}).Decode(&got); err != nil {
			t.Fatal(err)
		}
		if err := coll.Drop(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// waitPlan waits for the index on the orders table and returns SQLite's
// plan for FerretDB's lookup by _id.
func waitPlan(t *testing.T, file string) string {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+file+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var table string
		err := db.QueryRow(`SELECT tbl_name FROM sqlite_master WHERE type = 'index' AND name LIKE 'orders%' || ?`, idIndexSuffix).Scan(&table)
		if err == nil {
			var id, parent, notused int
			var detail string
			q := fmt.Sprintf(`EXPLAIN QUERY PLAN SELECT _ferretdb_sjson FROM %q WHERE _ferretdb_sjson->'$._id' = ?`, table)
			if err := db.QueryRow(q, `"o1"`).Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			return detail
		}
		if time.Now().After(deadline) {
			t.Fatalf("no _id lookup index after 10s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
