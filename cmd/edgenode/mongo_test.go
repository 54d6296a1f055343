package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// The embedded node's Mongo proxy, through the official driver: the issue 3
// "done when" as a test against the real binary and its embedded FerretDB.
func TestEmbeddedNodeMongoProxy(t *testing.T) {
	cfg, p := nodeConfig(t, "mongo:\n  enabled: true\n")
	startNode(t, cfg, p)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + p.mongo + "/").SetTimeout(20 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(context.Background())
	coll := client.Database("app").Collection("comments")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "c1"}, {Key: "text", Value: "hello"}, {Key: "likes", Value: 0}}); err != nil {
		t.Fatalf("insert: %v", err)
	}
	res, err := coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "c1"}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "text", Value: "edited"}}}, {Key: "$inc", Value: bson.D{{Key: "likes", Value: 2}}}})
	if err != nil || res.MatchedCount != 1 || res.ModifiedCount != 1 {
		t.Fatalf("update: %+v %v", res, err)
	}
	var got bson.M
	if err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: "c1"}}).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got["text"] != "edited" || got["likes"] != int32(2) {
		t.Errorf("document: %v", got)
	}
	for k := range got {
		if strings.HasPrefix(k, "_edgenode") {
			t.Errorf("hidden field visible: %v", got)
		}
	}
	_, err = coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: "c1"}}, bson.D{{Key: "$push", Value: bson.D{{Key: "tags", Value: "x"}}}})
	if err == nil || !strings.Contains(err.Error(), "$push") || !strings.Contains(err.Error(), "local_only") {
		t.Errorf("$push on a replicated collection: %v", err)
	}
}
