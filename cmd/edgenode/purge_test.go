package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/testkit"
)

// purgeOn purges key with node p's admin route and returns the status.
func purgeOn(t *testing.T, p *nodeProc, key string) int {
	t.Helper()
	req, _ := http.NewRequest("DELETE", "http://"+p.admin+"/v1/cache/"+key, nil)
	req.Header.Set("Authorization", "Bearer "+adminTokenOf(t, p))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestPurgeReachesANodeThatWasDown is issue 16's "purge that arrives" with
// real processes: two nodes share a folder origin and cache an object for
// an hour; node2 is stopped; the object changes and is purged on node1;
// once node2 is back, it drops its old copy (the purge came through the
// replicated purge log) and serves the new object from the origin.
func TestPurgeReachesANodeThatWasDown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	origin := t.TempDir()
	obj := filepath.Join(origin, "pics", "cat.txt")
	if err := os.MkdirAll(filepath.Dir(obj), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(obj, []byte("cat v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, 2, "cdn: {ttl: 1h, origin: {dir: "+strconv.Quote(origin)+"}}\nlog: {level: info}\n")
	c.startAll()
	waitWritable(t, c, 60*time.Second, 0, 1)
	hc := httpsClient(true)
	media := func(i int) (string, string) {
		resp, body := get(t, hc, "https://"+c.nodes[i].https+"/media/pics/cat.txt")
		if resp.StatusCode != 200 {
			t.Fatalf("node%d: %d %q", i+1, resp.StatusCode, body)
		}
		return body, resp.Header.Get("X-Cache")
	}
	for i := range 2 {
		media(i)
		if body, x := media(i); body != "cat v1" || x != "HIT" {
			t.Fatalf("node%d not caching: %q %s", i+1, body, x)
		}
	}

	// Clients cannot forge (or erase) purges: the collection is in the
	// database reserved to the node's own connections.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := mongoClient(t, c.nodes[0]).Database("edgenode_fleet").Collection("purges").
		InsertOne(ctx, bson.D{{Key: "key", Value: "pics/cat.txt"}, {Key: "at", Value: time.Now().Add(time.Hour)}})
	if err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("a client wrote a purge record: %v", err)
	}

	c.nodes[1].signal(syscall.SIGTERM)
	c.nodes[1].wait(30 * time.Second)
	if err := os.WriteFile(obj, []byte("cat v2, new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := purgeOn(t, c.nodes[0], "pics/cat.txt"); code != http.StatusNoContent {
		t.Fatalf("purge on node1 with node2 down: %d", code)
	}
	if body, x := media(0); body != "cat v2, new" || x != "MISS" {
		t.Fatalf("node1 after its purge: %q %s", body, x)
	}

	c.start(1)
	back := time.Now()
	testkit.WaitFor(t, 60*time.Second, "node2 to serve the new object", func() bool {
		body, _ := media(1)
		return body == "cat v2, new"
	})
	t.Logf("node2 up to the purge applied: %v", time.Since(back).Round(time.Millisecond))
	// The copy is dropped just before the counter moves: poll it.
	testkit.WaitFor(t, 10*time.Second, "node2's edgenode_cdn_purge_log_applied_total to be 1", func() bool {
		return metricValue(t, c.nodes[1].admin, "edgenode_cdn_purge_log_applied_total") == "1"
	})
	if body, x := media(1); body != "cat v2, new" || x != "HIT" {
		t.Errorf("node2 keeps the copy fetched after the purge: %q %s", body, x)
	}
}
