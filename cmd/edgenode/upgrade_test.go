package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/testkit"
)

// Rolling upgrades across versions, with real processes: one node runs a
// binary built from an earlier commit of this repository (the release
// before mesh protocol versions were negotiated, version 1), the others
// this tree's (version 2). They must link on version 1, replicate writes
// made on every node (the old node's initial sync included) and carry
// pubsub publishes both ways. A node playing version 4 (two away from the
// newest) is refused by every node, logged with what to do and counted.

// baselineCommit is the commit of the version 1 baseline: main as it was
// when protocol versions were introduced. Its binary speaks mesh protocol
// 1 only. When mesh.Protocol moves to 3, this becomes a commit of version
// 2 (version 1 is then refused, which TestProtocolVersionsOneApart in
// internal/mesh covers). The cluster config below must stay one that this
// commit's binary accepts.
const baselineCommit = "e1a730d2dbf917d56a203061af551e4b7768ff89"

// baselineBinary builds the edgenode binary of baselineCommit once per
// machine: the source comes out of this repository's history with git
// archive (no worktree is registered), and the binary is kept under the
// user's cache folder; the Go build cache keeps the dependencies' compiled
// packages, which are the bulk of the build. The test is skipped, saying
// why, when this tree is not a git checkout holding that commit.
func baselineBinary(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	bin := filepath.Join(cache, "edgenode-tests", "edgenode-"+baselineCommit[:12])
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := exec.Command("git", "cat-file", "-e", baselineCommit+"^{commit}").Run(); err != nil {
		t.Skipf("needs the git history holding the baseline commit %s (git fetch --unshallow): %v", baselineCommit, err)
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", `git -C "$(git rev-parse --show-toplevel)" archive "$1" | tar -x -C "$2"`, "sh", baselineCommit, src)
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("extracting %s: %v\n%s", baselineCommit, err, out)
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	// Built beside its final name and renamed, so a concurrent run never
	// sees half a binary.
	tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid())
	build := exec.Command("go", "build", "-o", tmp, "./cmd/edgenode")
	build.Dir = src
	build.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		os.Remove(tmp)
		t.Fatalf("building %s: %v\n%s", baselineCommit, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the baseline binary in %v", time.Since(start).Round(time.Second))
	return bin
}

// hasLine reports whether one line of out contains every part.
func hasLine(out string, parts ...string) bool {
	for l := range strings.SplitSeq(out, "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func TestClusterMixedVersions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	old := baselineBinary(t)
	c := replCluster(t, 4)
	c.nodes[1].bin = old // node2 runs the baseline release
	// node4 plays a release two versions newer than this tree.
	c.nodes[3].env = []string{"EDGENODE_TEST_MESH_PROTOCOL=4"}
	cs := startReplCluster(t, c, 3) // node2 syncs from node1 over a version 1 link

	// The links: version 1 with the old node, 2 between the new ones.
	testkit.WaitFor(t, 30*time.Second, "links up on the versions expected", func() bool {
		o1, o3 := c.nodes[0].out.String(), c.nodes[2].out.String()
		return hasLine(o1, "peer link up", "peer=node2", "protocol=1") && hasLine(o1, "peer link up", "peer=node3", "protocol=2") &&
			hasLine(o3, "peer link up", "peer=node2", "protocol=1")
	})

	// Writes on every node, the old one included, while publishes go from
	// every node to subscribers on every node.
	three := func() []*mongo.Client { return cs.get()[:3] }
	led := &ledger{}
	stop := runWorkload(three, 6, led)
	checkPubSubAcross(t, c.nodes[:3])
	time.Sleep(3 * time.Second) // more writes under way (the amount does not matter)
	stop()
	n := checkConverged(t, three(), names(3), led, 60*time.Second)
	t.Logf("%d writes (%d errors), %d documents identical on the two versions", led.ops.Load(), led.errs.Load(), n)
	if led.errs.Load() > 0 {
		t.Errorf("%d writes failed without any fault", led.errs.Load())
	}

	// A node two versions away: refused everywhere, with the line that
	// says what to do, counted, and shown on the status page.
	spawnNode(t, nil, nil, c.cfgs[3], c.nodes[3])
	testkit.WaitFor(t, 60*time.Second, "node4 refused by node1 and node3, logged and counted", func() bool {
		for _, i := range []int{0, 2} {
			p := c.nodes[i]
			if !hasLine(p.out.String(), "mesh protocol versions more than one apart", "peer=node4", "peer_protocol=4", "local_protocol=2", "upgrade this node") ||
				metricSum(t, p.admin, "edgenode_mesh_link_refused_total", "reason", "protocol_version") < 1 ||
				!strings.Contains(c.members(i)["node4"].Unverified, "mesh protocol") {
				return false
			}
		}
		return true
	})
	// The old node knows nothing of versions: it dials node4 (lower ids
	// dial), and node4's handshake refuses what it offers.
	testkit.WaitFor(t, 60*time.Second, "node4 refuses the old node's handshake", func() bool {
		return hasLine(c.nodes[3].out.String(), "mesh protocol versions more than one apart", "peer=node2", "peer_protocol=1", "local_protocol=4")
	})
	for _, i := range []int{0, 1, 2} {
		if m := c.members(i)["node4"]; m.Verified {
			t.Errorf("node%d verified node4: %+v", i+1, m)
		}
	}
}

// checkPubSubAcross subscribes a websocket on every node and publishes on
// every node until each subscriber has had a message from each publisher.
func checkPubSubAcross(t *testing.T, nodes []*nodeProc) {
	t.Helper()
	const channel = "demo/mixed-versions"
	type seen struct {
		mu   sync.Mutex
		from map[string]bool
	}
	subs := make([]*seen, len(nodes))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	for i, p := range nodes {
		ws := subscribeWS(t, p, channel)
		s := &seen{from: map[string]bool{}}
		subs[i] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			context.AfterFunc(ctx, func() { ws.Close() })
			for {
				_ = ws.SetReadDeadline(time.Now().Add(time.Minute))
				var f frame
				if err := ws.ReadJSON(&f); err != nil {
					if ctx.Err() == nil {
						t.Errorf("subscriber on %s: %v", p.https, err)
					}
					return
				}
				var d struct{ From string }
				if f.Type == "message" && json.Unmarshal(f.Data, &d) == nil {
					s.mu.Lock()
					s.from[d.From] = true
					s.mu.Unlock()
				}
			}
		}()
	}
	tokens := make([]string, len(nodes))
	for i, p := range nodes {
		tokens[i] = adminTokenOf(t, p)
	}
	// Interest in a new subscription reaches the peers a moment later:
	// publish rounds until every subscriber had every publisher.
	testkit.WaitFor(t, 45*time.Second, "publishes from every node on every node", func() bool {
		for i, p := range nodes {
			if code := publish(t, p, tokens[i], channel, fmt.Sprintf(`{"from":"node%d"}`, i+1)); code != 200 {
				t.Fatalf("publish on node%d: %d", i+1, code)
			}
		}
		for _, s := range subs {
			s.mu.Lock()
			n := len(s.from)
			s.mu.Unlock()
			if n != len(nodes) {
				return false
			}
		}
		return true
	})
	cancel()
}
