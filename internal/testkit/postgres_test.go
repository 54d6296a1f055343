package testkit

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// TestPGFerrets starts two FerretDB-on-PostgreSQL upstreams, checks that
// they are separate databases that store and return documents, and that
// Stop leaves no process and no folder behind.
func TestPGFerrets(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL and FerretDB")
	}
	s, err := StartPGFerrets(2)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var clients []*mongo.Client
	for _, uri := range s.URIs() {
		cl, err := mongo.Connect(options.Client().ApplyURI(uri))
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cl.Disconnect(context.Background()) }()
		clients = append(clients, cl)
	}
	if _, err := clients[0].Database("d").Collection("c").InsertOne(ctx, bson.D{{Key: "_id", Value: "a"}, {Key: "n", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	if n, err := clients[0].Database("d").Collection("c").CountDocuments(ctx, bson.D{}); err != nil || n != 1 {
		t.Fatalf("first upstream: %d documents, %v", n, err)
	}
	if n, err := clients[1].Database("d").Collection("c").CountDocuments(ctx, bson.D{}); err != nil || n != 0 {
		t.Fatalf("second upstream sees %d documents (%v): not a database of its own", n, err)
	}
	pid := s.PG.cmd.Process.Pid
	s.Stop()
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("postgres %d still there after Stop: %v", pid, err)
	}
	if _, err := os.Stat(s.PG.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left behind: %v", s.PG.Dir, err)
	}
}
