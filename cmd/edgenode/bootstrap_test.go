package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.yaml.in/yaml/v3"

	"github.com/edgenode/edgenode/internal/testkit"
)

// No accidental new cluster: a new (or wiped) node whose seeds are down
// waits for a peer to sync from instead of starting a cluster of its own,
// unless it is told it is the first node (--bootstrap, mongo.bootstrap).

// meshBind returns mesh.bind of a node's config (its seed address).
func meshBind(t *testing.T, cfg string) string {
	t.Helper()
	var c struct {
		Mesh struct{ Bind string } `yaml:"mesh"`
	}
	if err := yaml.Unmarshal([]byte(cfg), &c); err != nil {
		t.Fatal(err)
	}
	return c.Mesh.Bind
}

// readyz returns the node's /readyz status code and body.
func readyz(p *nodeProc) (int, string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + p.admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestClusterNewNodeWaitsForPeer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	c := newCluster(t, 2, "log: {level: info}\n")
	seed1 := meshBind(t, c.cfgs[0])
	// node2 is new, its seeds (node1's and its own address) list a node
	// that is not running, and it is not told to bootstrap.
	spawnNode(t, nil, nil, c.cfgs[1], c.nodes[1])
	node2 := c.nodes[1]
	want := "waiting for a peer to sync from: seeds " + seed1 + " not reached; start with --bootstrap"
	var body string
	testkit.WaitFor(t, 60*time.Second, "node2's /readyz to say it waits for a peer", func() bool {
		var code int
		code, body = readyz(node2)
		return code == http.StatusServiceUnavailable && strings.Contains(body, want)
	})
	t.Logf("node2 /readyz: %s", strings.TrimSpace(body))
	// The log line comes once node2 would have started alone (3 s), then
	// every 10 s: the second one proves it waited well beyond that.
	testkit.WaitFor(t, 60*time.Second, "node2 to log twice that it waits for a peer", func() bool {
		return strings.Count(node2.out.String(), `msg="waiting for a peer to sync from`) >= 2
	})
	if code, body := readyz(node2); code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		t.Fatalf("node2 /readyz after waiting: %d %q", code, body)
	}
	if st, err := replStatus(node2); err != nil || st.State != "waiting_for_source" || !strings.Contains(st.Writes, want) {
		t.Fatalf("node2 status: %+v %v", st, err)
	}
	if strings.Contains(node2.out.String(), "starts the cluster's data") {
		t.Fatal("node2 started a cluster of its own")
	}
	cl2 := mongoClient(t, node2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := cl2.Database(replDB).Collection(docColl).InsertOne(ctx, bson.D{{Key: "_id", Value: "from-node2"}})
	var se mongo.ServerError
	if !errors.As(err, &se) || !se.HasErrorCode(10107) || !strings.Contains(err.Error(), "waiting for a peer to sync from") {
		t.Fatalf("a write to the waiting node2: got %v, want error 10107 naming the reason", err)
	}
	t.Logf("write refused: %v", err)

	// node1 (mongo.bootstrap: true) starts the cluster; node2 syncs from it.
	c.start(0)
	waitWritable(t, c, 60*time.Second, 0)
	cl1 := mongoClient(t, c.nodes[0])
	if _, err := cl1.Database(replDB).Collection(docColl).InsertOne(ctx, bson.D{{Key: "_id", Value: "from-node1"}}); err != nil {
		t.Fatal(err)
	}
	waitNodeReady(t, node2)
	waitWritable(t, c, 60*time.Second, 1)
	if !strings.Contains(node2.out.String(), "initial sync done") {
		t.Error("node2 did not log an initial sync")
	}
	if strings.Contains(node2.out.String(), "starts the cluster's data") {
		t.Error("node2 started a cluster of its own")
	}
	testkit.WaitFor(t, 30*time.Second, "node1's document on node2", func() bool {
		n, err := cl2.Database(replDB).Collection(docColl).CountDocuments(ctx, bson.D{{Key: "_id", Value: "from-node1"}})
		return err == nil && n == 1
	})
	if _, err := cl2.Database(replDB).Collection(docColl).InsertOne(ctx, bson.D{{Key: "_id", Value: "from-node2"}}); err != nil {
		t.Fatalf("a write to node2 once synced: %v", err)
	}
}

func TestClusterBootstrapFlagStartsAlone(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	c := newCluster(t, 2, "log: {level: info}\n")
	// node2's config does not bootstrap; the flag does, with node1 down.
	spawnNode(t, nil, []string{"--bootstrap"}, c.cfgs[1], c.nodes[1])
	node2 := c.nodes[1]
	waitNodeReady(t, node2)
	waitWritable(t, c, 60*time.Second, 1)
	if !strings.Contains(node2.out.String(), "starts the cluster's data") {
		t.Error("node2 did not log that it starts the cluster's data")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := mongoClient(t, node2).Database(replDB).Collection(docColl).InsertOne(ctx, bson.D{{Key: "_id", Value: "first"}}); err != nil {
		t.Fatalf("a write to the bootstrapped node: %v", err)
	}
}
