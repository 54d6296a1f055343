package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/testkit"
)

// resumesOn connects to addr with cache and reports whether TLS resumed. A
// request makes sure the TLS 1.3 ticket sent after the handshake is read.
// The fixed ServerName is the session-cache key, so a ticket from one node
// is offered to another, as a browser does for one host name.
func resumesOn(t *testing.T, addr string, cache tls.ClientSessionCache) bool {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: "fleet.test", InsecureSkipVerify: true,
		ClientSessionCache: cache, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: fleet.test\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return c.ConnectionState().DidResume
}

// TestFleetTicketKeysOverReplicatedMongo: with the default fleet storage
// (the replicated Mongo collection), the cron_leader's session-ticket keys
// reach the other node through replication, so a session from one node
// resumes on the other; and they survive a restart of the whole fleet, so
// a ticket from before it still resumes after it.
func TestFleetTicketKeysOverReplicatedMongo(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	c := newCluster(t, 2, "log: {level: info}\n")
	c.cfgs[0] = mergeYAML(t, c.cfgs[0], "node: {cron_leader: true}\n")
	c.startAll()

	testkit.WaitFor(t, 60*time.Second, "a session from node1 to resume on node2", func() bool {
		cache := tls.NewLRUClientSessionCache(4)
		resumesOn(t, c.nodes[0].https, cache)
		return resumesOn(t, c.nodes[1].https, cache)
	})
	// The keys are in node2's own replica of the collection, encrypted:
	// read straight from its database (the proxy keeps the collection to
	// the node's own client), as a dump would, they are not JSON of keys.
	cl, err := mongo.Connect(options.Client().ApplyURI(databaseURI(t, c.nodes[1])).SetTimeout(15 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cl.Disconnect(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var doc struct {
		V    []byte `bson:"v"`
		Size int64  `bson:"size"`
	}
	if err := cl.Database("edgenode_fleet").Collection("tls").FindOne(ctx, bson.D{{Key: "_id", Value: "tls/session_ticket_keys"}}).Decode(&doc); err != nil {
		t.Fatalf("ticket keys not in node2's replica: %v", err)
	}
	if len(doc.V) == 0 || doc.Size == 0 {
		t.Fatalf("stored keys without a value: %+v", doc)
	}
	if bytes.Contains(doc.V, []byte(`"keys"`)) || bytes.Contains(doc.V, []byte(`"key"`)) {
		t.Errorf("the ticket keys are stored in the clear: %q", doc.V)
	}

	// A session from before a restart of the whole fleet resumes after it:
	// the keys were on disk in every node's database, nothing re-made them.
	before := tls.NewLRUClientSessionCache(4)
	resumesOn(t, c.nodes[1].https, before)
	for _, p := range c.nodes {
		p.signal(syscall.SIGTERM)
	}
	for _, p := range c.nodes {
		if code := p.wait(30 * time.Second); code != 0 {
			t.Fatalf("exit code %d", code)
		}
	}
	c.startAll()
	testkit.WaitFor(t, 30*time.Second, "node1 to apply the stored keys", func() bool {
		cache := tls.NewLRUClientSessionCache(4)
		resumesOn(t, c.nodes[1].https, cache)
		return resumesOn(t, c.nodes[0].https, cache)
	})
	if !resumesOn(t, c.nodes[0].https, before) {
		t.Error("a ticket from before the fleet restart did not resume on node1")
	}
}
