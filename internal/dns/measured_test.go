package dns

import (
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/serf/coordinate"
	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/rum"
)

// waitPrefer waits for the table's loop to publish a preference.
func waitPrefer(t *testing.T, tb *rum.Table, client string, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if p := tb.Prefer(ip(client)); len(p) > 0 && p[0] == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no preference for %s: %v", client, tb.Prefer(ip(client)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMeasuredLeadsAnswer: once browsers in a client's /24 measured a far
// node faster than the near one, the far node leads that network's
// answers (by ECS of at least /24, or by the resolver's address), with
// ECS scope 24; a shorter ECS source and other networks keep map order.
func TestMeasuredLeadsAnswer(t *testing.T) {
	tb, err := rum.New(rum.Options{MinSamples: 3}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	go tb.Run(ctx, nil)
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), func(o *Options) { o.Measured = tb })
	for range 3 {
		// Paris clients: Frankfurt is near on the map, slow on the wire.
		tb.Record(ip("192.0.2.10"), []rum.Sample{{Node: "fra", MS: 180}, {Node: "iad", MS: 40}})
		tb.Record(ip("127.0.0.5"), []rum.Sample{{Node: "sin", MS: 180}, {Node: "gru", MS: 4}})
	}
	waitPrefer(t, tb, "192.0.2.10", "iad")
	waitPrefer(t, tb, "127.0.0.1", "gru")

	r := ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/24")})
	if got := answerNodes(t, r); len(got) == 0 || got[0] != "iad" {
		t.Errorf("Paris /24 after measuring: %v, want iad first", got)
	}
	if e := replyECS(r); e == nil || e.SourceScope != 26 && e.SourceScope != 24 {
		t.Errorf("scope %v", e)
	}
	before := metricValue(t, ts.reg, "edgenode_dns_measured_answers_total")
	ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/16")})
	if after := metricValue(t, ts.reg, "edgenode_dns_measured_answers_total"); after != before {
		t.Errorf("a /16 source names many networks, yet its answer was led by a measurement")
	}
	r = ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("198.51.100.0/25")})
	if got := answerNodes(t, r); !slices.Equal(got, []string{"sin", "pdx"}) {
		t.Errorf("Tokyo (not measured): %v", got)
	}
	r = ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{})
	if got := answerNodes(t, r); len(got) == 0 || got[0] != "gru" {
		t.Errorf("resolver 127.0.0.1 after measuring: %v, want gru first", got)
	}
	if v := metricValue(t, ts.reg, "edgenode_dns_measured_answers_total"); v < 2 {
		t.Errorf("measured answers metric %v", v)
	}
}

// TestSecondClosestByCoordinates: with network coordinates in the map,
// the second address is the node closest in RTT to the first, not the
// second nearest on the map.
func TestSecondClosestByCoordinates(t *testing.T) {
	nodes := fiveNodes()
	at := func(x float64) *coordinate.Coordinate {
		c := coordinate.NewCoordinate(coordinate.DefaultConfig())
		c.Vec[0] = x
		return c
	}
	// On the wire Frankfurt is next to Sao Paulo (a made-up topology).
	pos := map[string]float64{"fra": 0, "gru": 0.005, "iad": 0.08, "pdx": 0.12, "sin": 0.2}
	for i := range nodes {
		nodes[i].Coord = at(pos[nodes[i].ID])
	}
	ts := startServer(t, writeDB(t, clientNets), nodes, nil)
	r := ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/24")})
	if got := answerNodes(t, r); !slices.Equal(got, []string{"fra", "gru"}) {
		t.Errorf("Paris: %v, want fra then gru (closest to fra by RTT)", got)
	}
	// Without coordinates: map order.
	ts2 := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	r = ts2.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/24")})
	if got := answerNodes(t, r); !slices.Equal(got, []string{"fra", "iad"}) {
		t.Errorf("Paris without coordinates: %v", got)
	}
}
