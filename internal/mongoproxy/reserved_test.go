package mongoproxy

import (
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// TestReservedNamespace plays an application (any client of the proxy's
// port, no credentials needed on the embedded database) going after the
// fleet's secrets in edgenode_fleet.tls: every read, write and DDL naming
// the database, directly or from another database, is refused with an
// error naming it, and listDatabases does not show it; the node's own
// internal connection reads and writes it, and its writes are captured.
// Long on purpose: every way of naming the database, in one list, so that
// a missing one shows.
func TestReservedNamespace(t *testing.T) {
	tp := newProxy(t, 1, "n1")
	internal := internalClient(t, tp.Proxy)
	secrets := internal.Database(reservedDB).Collection("tls")
	before := tp.Replica().LastSeq()
	if _, err := secrets.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "acme/account"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: "PRIVATE KEY"}}}}, options.UpdateOne().SetUpsert(true)); err != nil {
		t.Fatalf("internal upsert: %v", err)
	}
	if got := tp.Replica().LastSeq(); got != before+1 {
		t.Fatalf("the internal write was not captured: op log %d -> %d", before, got)
	}
	if m := findOne(t, secrets, bson.D{{Key: "_id", Value: "acme/account"}}); m["v"] != "PRIVATE KEY" {
		t.Fatalf("internal read: %v", m)
	}
	stored, err := tp.direct.Database(reservedDB).Collection("tls").FindOne(testCtx, bson.D{{Key: "_id", Value: "acme/account"}}).Raw()
	if err != nil || stored.Lookup(crdt.MetaField).Type == 0 {
		t.Fatalf("stored without replication metadata: %v %v", stored, err)
	}
	if names, err := internal.ListDatabaseNames(testCtx, bson.D{}); err != nil || !contains(names, reservedDB) {
		t.Fatalf("the internal client does not see %s: %v %v", reservedDB, names, err)
	}

	app := tp.client
	other := freshDB("app")
	if _, err := app.Database(other).Collection("x").InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	appSecrets := app.Database(reservedDB).Collection("tls")
	refused := func(name string, err error) {
		t.Helper()
		if !isUnauthorized(err) || !strings.Contains(err.Error(), reservedDB) {
			t.Errorf("%s: %v; want error 13 naming %s", name, err, reservedDB)
		}
	}
	refused("find", appSecrets.FindOne(testCtx, bson.D{}).Err())
	_, err = appSecrets.CountDocuments(testCtx, bson.D{})
	refused("count", err)
	_, err = appSecrets.Distinct(testCtx, "v", bson.D{}).Raw()
	refused("distinct", err)
	_, err = appSecrets.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "tls/session_ticket_keys"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: "attacker's keys"}}}}, options.UpdateOne().SetUpsert(true))
	refused("updateOne upsert", err)
	_, err = appSecrets.InsertOne(testCtx, bson.D{{Key: "_id", Value: "x"}})
	refused("insertOne", err)
	_, err = appSecrets.DeleteMany(testCtx, bson.D{})
	refused("deleteMany", err)
	refused("findOneAndUpdate", appSecrets.FindOneAndUpdate(testCtx, bson.D{}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: 1}}}}).Err())
	_, err = appSecrets.Aggregate(testCtx, bson.A{})
	refused("aggregate", err)
	_, err = app.Database(reservedDB).ListCollectionNames(testCtx, bson.D{})
	refused("listCollections", err)
	_, err = appSecrets.Indexes().List(testCtx)
	refused("listIndexes", err)
	_, err = appSecrets.Indexes().CreateOne(testCtx, mongo.IndexModel{Keys: bson.D{{Key: "v", Value: 1}}})
	refused("createIndexes", err)
	refused("dbStats", app.Database(reservedDB).RunCommand(testCtx, bson.D{{Key: "dbStats", Value: 1}}).Err())
	refused("collStats", app.Database(reservedDB).RunCommand(testCtx, bson.D{{Key: "collStats", Value: "tls"}}).Err())
	refused("explain", app.Database(reservedDB).RunCommand(testCtx, bson.D{{Key: "explain", Value: bson.D{{Key: "find", Value: "tls"}}}}).Err())
	refused("create", app.Database(reservedDB).CreateCollection(testCtx, "mine"))
	refused("drop", appSecrets.Drop(testCtx))
	refused("dropDatabase", app.Database(reservedDB).Drop(testCtx))
	// From another database.
	x := app.Database(other).Collection("x")
	unionWith := bson.D{{Key: "$unionWith", Value: bson.D{{Key: "coll", Value: "tls"}, {Key: "db", Value: reservedDB}}}}
	lookup := bson.D{{Key: "$lookup", Value: bson.D{{Key: "from", Value: bson.D{{Key: "db", Value: reservedDB}, {Key: "coll", Value: "tls"}}}, {Key: "pipeline", Value: bson.A{}}, {Key: "as", Value: "s"}}}}
	for name, pipeline := range map[string]bson.A{
		"$unionWith":                  {unionWith},
		"$lookup":                     {lookup},
		"$lookup in $facet":           {bson.D{{Key: "$facet", Value: bson.D{{Key: "f", Value: bson.A{lookup}}}}}},
		"$unionWith in $lookup":       {bson.D{{Key: "$lookup", Value: bson.D{{Key: "from", Value: "x"}, {Key: "pipeline", Value: bson.A{unionWith}}, {Key: "as", Value: "s"}}}}},
		"$unionWith in $unionWith":    {bson.D{{Key: "$unionWith", Value: bson.D{{Key: "coll", Value: "x"}, {Key: "pipeline", Value: bson.A{unionWith}}}}}},
		"$out":                        {bson.D{{Key: "$out", Value: bson.D{{Key: "db", Value: reservedDB}, {Key: "coll", Value: "tls"}}}}},
		"$merge":                      {bson.D{{Key: "$merge", Value: bson.D{{Key: "into", Value: bson.D{{Key: "db", Value: reservedDB}, {Key: "coll", Value: "tls"}}}}}}},
		"$lookup, other case of name": {bson.D{{Key: "$lookup", Value: bson.D{{Key: "from", Value: bson.D{{Key: "db", Value: strings.ToUpper(reservedDB)}, {Key: "coll", Value: "tls"}}}, {Key: "pipeline", Value: bson.A{}}, {Key: "as", Value: "s"}}}}},
	} {
		_, err := x.Aggregate(testCtx, pipeline)
		refused("aggregate "+name, err)
	}
	refused("explain aggregate", app.Database(other).RunCommand(testCtx, bson.D{{Key: "explain", Value: bson.D{
		{Key: "aggregate", Value: "x"}, {Key: "pipeline", Value: bson.A{unionWith}}, {Key: "cursor", Value: bson.D{}}}}}).Err())
	for _, rename := range []bson.D{
		{{Key: "renameCollection", Value: other + ".x"}, {Key: "to", Value: reservedDB + ".tls"}},
		{{Key: "renameCollection", Value: reservedDB + ".tls"}, {Key: "to", Value: other + ".stolen"}},
	} {
		refused("renameCollection", app.Database("admin").RunCommand(testCtx, rename).Err())
	}
	refused("dataSize", app.Database("admin").RunCommand(testCtx, bson.D{{Key: "dataSize", Value: reservedDB + ".tls"}}).Err())
	names, err := app.ListDatabaseNames(testCtx, bson.D{})
	if err != nil || contains(names, reservedDB) || contains(names, metaDB) || !contains(names, other) {
		t.Errorf("listDatabases shows %v (%v)", names, err)
	}

	// Nothing of it reached the secrets.
	all := findAll(t, secrets)
	if len(all) != 1 || all[0].Lookup("v").StringValue() != "PRIVATE KEY" {
		t.Fatalf("the secrets changed: %v", all)
	}
	if got := tp.Replica().LastSeq(); got != before+2 {
		t.Fatalf("op log %d -> %d, want the internal write and the app's insert", before, got)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestCheckNamespaces covers what FerretDB cannot run (applyOps, bulkWrite,
// mapReduce into another database, views) and the edgenode_meta write
// targets.
func TestCheckNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name, db string
		body     bson.D
		want     string // "" allowed, else a substring of the error
	}{
		{"find elsewhere", "app", bson.D{{Key: "find", Value: "c"}}, ""},
		{"$db", reservedDB, bson.D{{Key: "ping", Value: 1}}, reservedDB},
		{"$db other case", "EdgeNode_Fleet", bson.D{{Key: "find", Value: "tls"}}, reservedDB},
		{"applyOps", "admin", bson.D{{Key: "applyOps", Value: bson.A{bson.D{{Key: "op", Value: "i"}, {Key: "ns", Value: reservedDB + ".tls"}, {Key: "o", Value: bson.D{{Key: "_id", Value: 1}}}}}}}, reservedDB},
		{"applyOps command", "admin", bson.D{{Key: "applyOps", Value: bson.A{bson.D{{Key: "op", Value: "c"}, {Key: "ns", Value: "app.$cmd"},
			{Key: "o", Value: bson.D{{Key: "renameCollection", Value: "app.x"}, {Key: "to", Value: reservedDB + ".tls"}}}}}}}, reservedDB},
		{"bulkWrite", "admin", bson.D{{Key: "bulkWrite", Value: 1}, {Key: "ops", Value: bson.A{}}, {Key: "nsInfo", Value: bson.A{bson.D{{Key: "ns", Value: reservedDB + ".tls"}}}}}, reservedDB},
		{"mapReduce out db", "app", bson.D{{Key: "mapReduce", Value: "c"}, {Key: "out", Value: bson.D{{Key: "replace", Value: "tls"}, {Key: "db", Value: reservedDB}}}}, reservedDB},
		{"view over it", "app", bson.D{{Key: "create", Value: "v"}, {Key: "viewOn", Value: "c"}, {Key: "pipeline", Value: bson.A{bson.D{{Key: "$unionWith", Value: bson.D{{Key: "coll", Value: "tls"}, {Key: "db", Value: reservedDB}}}}}}}, reservedDB},
		{"splitVector", "admin", bson.D{{Key: "splitVector", Value: reservedDB + ".tls"}}, reservedDB},
		{"$out into meta", "app", bson.D{{Key: "aggregate", Value: "c"}, {Key: "pipeline", Value: bson.A{bson.D{{Key: "$out", Value: bson.D{{Key: "db", Value: metaDB}, {Key: "coll", Value: "tombstones"}}}}}}}, metaDB},
		{"$merge in meta", metaDB, bson.D{{Key: "aggregate", Value: "conflicts"}, {Key: "pipeline", Value: bson.A{bson.D{{Key: "$merge", Value: "tombstones"}}}}}, metaDB},
		{"rename into meta", "admin", bson.D{{Key: "renameCollection", Value: "app.c"}, {Key: "to", Value: metaDB + ".tombstones"}}, metaDB},
		{"read meta", metaDB, bson.D{{Key: "find", Value: "conflicts"}}, ""},
		{"count meta", metaDB, bson.D{{Key: "count", Value: "conflicts"}}, ""},
		{"collMod meta", metaDB, bson.D{{Key: "collMod", Value: "tombstones"}, {Key: "validator", Value: bson.D{}}}, metaDB},
		{"mapReduce in meta", metaDB, bson.D{{Key: "mapReduce", Value: "conflicts"}, {Key: "out", Value: "x"}}, metaDB},
		{"convertToCapped meta", metaDB, bson.D{{Key: "convertToCapped", Value: "tombstones"}, {Key: "size", Value: 1}}, metaDB},
		{"$lookup meta", "app", bson.D{{Key: "aggregate", Value: "c"}, {Key: "pipeline", Value: bson.A{bson.D{{Key: "$lookup", Value: bson.D{{Key: "from", Value: bson.D{{Key: "db", Value: metaDB}, {Key: "coll", Value: "conflicts"}}}}}}}}}, ""},
	} {
		body := append(tc.body, bson.E{Key: "$db", Value: tc.db})
		raw := rawDoc(t, body)
		cmd := &command{name: tc.body[0].Key, db: tc.db, body: raw}
		e := checkNamespaces(cmd, strings.ToLower(cmd.name))
		switch {
		case tc.want == "" && e != nil:
			t.Errorf("%s: refused: %v", tc.name, e)
		case tc.want != "" && (e == nil || !strings.Contains(e.Msg, tc.want)):
			t.Errorf("%s: %v, want an error naming %s", tc.name, e, tc.want)
		}
	}
}

// TestClusterChangeStreamHidesReserved: a change stream on the whole
// cluster is rewritten to leave the reserved database's events out.
func TestClusterChangeStreamHidesReserved(t *testing.T) {
	body := rawDoc(t, bson.D{{Key: "aggregate", Value: 1}, {Key: "pipeline", Value: bson.A{
		bson.D{{Key: "$changeStream", Value: bson.D{{Key: "allChangesForCluster", Value: true}}}},
		bson.D{{Key: "$project", Value: bson.D{{Key: "x", Value: 1}}}},
	}}, {Key: "cursor", Value: bson.D{}}, {Key: "$db", Value: "admin"}})
	out := hideReservedChanges(body)
	if out == nil {
		t.Fatal("not rewritten")
	}
	stages, _ := out.Lookup("pipeline").Array().Values()
	if len(stages) != 3 || stages[1].Document().Lookup("$match", "ns.db", "$ne").StringValue() != reservedDB || stages[2].Document().Index(0).Key() != "$project" {
		t.Fatalf("rewritten: %v", out)
	}
	if out.Lookup("cursor").Type != bson.TypeEmbeddedDocument || out.Lookup("$db").StringValue() != "admin" {
		t.Fatalf("other fields lost: %v", out)
	}
	db := rawDoc(t, bson.D{{Key: "aggregate", Value: 1}, {Key: "pipeline", Value: bson.A{bson.D{{Key: "$changeStream", Value: bson.D{}}}}}, {Key: "$db", Value: "app"}})
	if hideReservedChanges(db) != nil {
		t.Fatal("a database's change stream rewritten")
	}
}
