package dns

import (
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
)

// allOf asks for every member of the all-nodes pool, from a resolver in
// Paris, and returns the node ids answered, sorted.
func allOf(t *testing.T, ts *testServer, qt uint16) []string {
	t.Helper()
	got := answerNodes(t, ts.query(t, "all.edgenode.test.", qt, qopt{ecs: ecs("192.0.2.0/26")}))
	slices.Sort(got)
	return got
}

// TestDynamicAnswersLeaveOutNodesThatAreNotReady: real queries over UDP.
// A node that says it is not ready (its Mongo replica lags) is left out of
// the dynamic answers, even for the clients it is nearest to, while another
// node is ready; it keeps its per-node name; it is counted and logged with
// its reason.
func TestDynamicAnswersLeaveOutNodesThatAreNotReady(t *testing.T) {
	log, logs := testkit.Logger(t)
	ts := startServerLog(t, writeDB(t, clientNets), fiveNodes(), func(o *Options) {
		o.Dynamic = append(o.Dynamic, DynamicName{Name: "all", K: 16})
	}, log)
	newYork := qopt{ecs: ecs("192.0.2.128/26")}
	if got := answerNodes(t, ts.query(t, "one.edgenode.test.", mdns.TypeA, newYork)); !slices.Equal(got, []string{"iad"}) {
		t.Fatalf("all ready, New York: %v, want iad", got)
	}
	nodes := fiveNodes()
	nodes[2].Ready, nodes[2].NotReady = false, "mongo replication: 40 ops of fra waiting for 9s (max_lag 5s)" // iad
	ts.pub.Publish(nodes)
	for range 20 {
		if got := answerNodes(t, ts.query(t, "one.edgenode.test.", mdns.TypeA, newYork)); len(got) != 1 || got[0] == "iad" {
			t.Fatalf("iad not ready, New York: %v, want another node", got)
		}
	}
	for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA} {
		if got := allOf(t, ts, qt); !slices.Equal(got, []string{"fra", "gru", "pdx", "sin"}) {
			t.Errorf("%s: %v, want every node but iad", mdns.TypeToString[qt], got)
		}
	}
	if r := ts.query(t, "iad.nodes.edgenode.test.", mdns.TypeA, qopt{}); len(r.Answer) != 1 {
		t.Errorf("iad's per-node name: %v", r)
	}
	if got := testutil.ToFloat64(ts.m.unready); got != 1 {
		t.Errorf("edgenode_dns_unready_nodes = %v, want 1", got)
	}
	if got := testutil.ToFloat64(ts.m.unreadyPools); got != 0 {
		t.Errorf("edgenode_dns_unready_fallback_pools = %v with ready nodes", got)
	}
	for _, want := range []string{"node=iad", "max_lag 5s"} {
		if !logs.Contains(want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	ts.pub.Publish(fiveNodes())
	if got := allOf(t, ts, mdns.TypeA); len(got) != 5 {
		t.Errorf("iad ready again: %v", got)
	}
	if got := testutil.ToFloat64(ts.m.unready); got != 0 {
		t.Errorf("edgenode_dns_unready_nodes = %v once ready", got)
	}
}

// TestNoReadyNodeFallsBackToServingOnes: when no node of a name's pool is
// ready, the answers name the alive, verified nodes that are not ready
// (never draining or unverified ones), and that is said in metrics and in
// a warning that is not repeated on every map change, only after a
// minute; when one node is ready again the answers name it alone.
func TestNoReadyNodeFallsBackToServingOnes(t *testing.T) {
	log, logs := testkit.Logger(t)
	ts := startServerLog(t, writeDB(t, clientNets), fiveNodes(), func(o *Options) {
		o.Dynamic = append(o.Dynamic, DynamicName{Name: "all", K: 16})
	}, log)
	nodes := fiveNodes()
	for i := range nodes {
		nodes[i].Ready, nodes[i].NotReady = false, "mongo replication: initial_sync"
	}
	nodes[0].State = nodemap.Draining                                         // fra
	nodes[1].Verified, nodes[1].Unverified = false, "no mutual-TLS peer link" // pdx
	ts.pub.Publish(nodes)
	for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA} {
		if got := allOf(t, ts, qt); !slices.Equal(got, []string{"gru", "iad", "sin"}) {
			t.Errorf("none ready, %s: %v, want the alive verified nodes", mdns.TypeToString[qt], got)
		}
	}
	// Two pools (all nodes, tag edge), two families each.
	if got := testutil.ToFloat64(ts.m.unreadyPools); got != 4 {
		t.Errorf("edgenode_dns_unready_fallback_pools = %v, want 4", got)
	}
	if got := testutil.ToFloat64(ts.m.unready); got != 3 {
		t.Errorf("edgenode_dns_unready_nodes = %v, want 3", got)
	}
	if got := testutil.ToFloat64(ts.m.unreadyAnswers); got < 2 {
		t.Errorf("edgenode_dns_unready_fallback_answers_total = %v after two fallback answers", got)
	}
	const warning = "no node is ready"
	if n := logs.Count(warning); n != 4 {
		t.Errorf("%d warnings, want one per pool and family:\n%s", n, logs.String())
	}
	for _, want := range []string{"all.edgenode.test.", "edge.edgenode.test.", "initial_sync", "level=WARN"} {
		if !logs.Contains(want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
	// The map changes every few seconds (load): no new warning for that.
	for i := range 5 {
		nodes[3].Load = float64(i + 1)
		ts.pub.Publish(nodes)
		allOf(t, ts, mdns.TypeA)
	}
	if n := logs.Count(warning); n != 4 {
		t.Errorf("warned again on map changes: %d warnings, want 4", n)
	}
	// A minute on, it is said again.
	ts.noteReadiness(ts.currentView().c, ts.currentView().ns, time.Now().Add(renoteEvery+time.Second))
	if n := logs.Count(warning); n != 8 {
		t.Errorf("after a minute: %d warnings, want 8", n)
	}

	nodes[4].Ready, nodes[4].NotReady = true, "" // sin
	ts.pub.Publish(nodes)
	for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA} {
		if got := allOf(t, ts, qt); !slices.Equal(got, []string{"sin"}) {
			t.Errorf("sin ready, %s: %v, want sin alone", mdns.TypeToString[qt], got)
		}
	}
	if got := testutil.ToFloat64(ts.m.unreadyPools); got != 0 {
		t.Errorf("edgenode_dns_unready_fallback_pools = %v with sin ready", got)
	}
	answers := testutil.ToFloat64(ts.m.unreadyAnswers)
	allOf(t, ts, mdns.TypeA)
	if got := testutil.ToFloat64(ts.m.unreadyAnswers); got != answers {
		t.Errorf("fallback answers counted with a ready node: %v, was %v", got, answers)
	}
	if !strings.Contains(logs.String(), "ready again") {
		t.Errorf("recovery not logged:\n%s", logs.String())
	}
}
