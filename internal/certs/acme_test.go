package certs_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/certs"
	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/edgenode/edgenode/internal/transport"
)

func testLog() *slog.Logger {
	if os.Getenv("CERTS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// fleetNode is one node of a test fleet: the real transport (TLS on
// 127.0.0.1) with a certs.Manager over its own KV on the store all nodes
// share.
type fleetNode struct {
	mgr  *certs.Manager
	srv  *transport.Server
	addr string
}

// fleetStores make a store the nodes of a test share (a folder, or a
// collection through a real Mongo proxy: one replica; replication between
// replicas is tested with real nodes in cmd/edgenode) and return how each
// node opens its own KV on it.
var fleetStores = map[string]func(t *testing.T) (open func() certs.KV){
	"file": func(t *testing.T) func() certs.KV {
		dir := t.TempDir()
		return func() certs.KV {
			kv, err := certs.NewFileKV(dir, 100*time.Millisecond, testLog())
			must(t, err)
			t.Cleanup(func() { kv.Close() })
			return kv
		}
	},
	"mongo": func(t *testing.T) func() certs.KV {
		coll := mongoCollection(t)
		return func() certs.KV { return newMongoKV(t, coll, 100*time.Millisecond) }
	},
}

func listenTCP(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func startFleetNode(t *testing.T, ln net.Listener, kv certs.KV, opts certs.Options) *fleetNode {
	t.Helper()
	reg := prometheus.NewRegistry()
	host, port := hostPort(ln.Addr().String())
	opts.ChallengeHost, opts.ChallengePort = host, port
	mgr, err := certs.New(opts, kv, testLog().With("node", opts.NodeID), reg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cf, kf, err := transport.EnsureSelfSigned(dir, nil, testLog())
	if err != nil {
		t.Fatal(err)
	}
	store, err := transport.NewCertStore([]transport.CertSource{{CertFile: cf, KeyFile: kf}}, testLog())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := transport.New(transport.Options{Listener: ln, Certs: store, ACME: mgr,
		App:    http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("app " + opts.NodeID)) }),
		Limits: transport.Limits{MaxHeaderBytes: 8 << 10, ReadHeaderTimeout: 10 * time.Second}}, testLog(), reg)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	if err := mgr.Start(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		mgr.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &fleetNode{mgr: mgr, srv: srv, addr: ln.Addr().String()}
}

// served is the leaf certificate a TLS client gets from n for name.
func (n *fleetNode) served(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", n.addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("dial %s for %s: %v", n.addr, name, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0]
}

func (n *fleetNode) servedChain(t *testing.T, name string) []*x509.Certificate {
	t.Helper()
	c, err := tls.Dial("tcp", n.addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("dial %s for %s: %v", n.addr, name, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates
}

func fingerprint(c *x509.Certificate) string { return transport.Fingerprint(c.Raw) }

func isPebbleIssued(c *x509.Certificate) bool { return strings.Contains(c.Issuer.CommonName, "Pebble") }

// events is how many times n's manager counted event.
func events(n *fleetNode, event string) float64 {
	return testutil.ToFloat64(n.mgr.Metrics().Events.WithLabelValues(event))
}

// TestACMELeaderOrdersFollowerServes: a real TLS-ALPN-01 validation.
// Pebble validates on the follower's port, so the follower answers the
// challenge the leader started, from shared storage (as when GeoDNS sends
// the CA to another clone). The leader obtains the certificate, the
// follower serves the same one without ordering, and a renewal replaces it
// on both without a restart.
func TestACMELeaderOrdersFollowerServes(t *testing.T) {
	for name, store := range fleetStores {
		t.Run(name, func(t *testing.T) { testLeaderOrdersFollowerServes(t, store(t)) })
	}
}

func testLeaderOrdersFollowerServes(t *testing.T, openKV func() certs.KV) {
	lnLeader, lnFollower := listenTCP(t), listenTCP(t)
	_, followerPort := hostPort(lnFollower.Addr().String())
	pb := startPebble(t, followerPort, false)
	const name = "shop.example.test"
	base := certs.Options{CA: pb.dir, CARoots: pb.roots, Email: "ops@example.test", Names: []string{name}, OnDemandWait: time.Second}

	fo := base
	fo.NodeID, fo.Leader = "follower", false
	fo.Names = []string{name}
	follower := startFleetNode(t, lnFollower, openKV(), fo)
	lo := base
	lo.NodeID, lo.Leader = "leader", true
	lo.Names = []string{name}
	leader := startFleetNode(t, lnLeader, openKV(), lo)

	testkit.WaitFor(t, time.Minute, "the leader to serve a Pebble certificate", func() bool { return isPebbleIssued(leader.served(t, name)) })
	testkit.WaitFor(t, 30*time.Second, "the follower to serve it", func() bool { return isPebbleIssued(follower.served(t, name)) })
	first := fingerprint(leader.served(t, name))
	if got := fingerprint(follower.served(t, name)); got != first {
		t.Fatalf("follower serves %s, leader %s", got, first)
	}
	chain := follower.servedChain(t, name)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{DNSName: name, Roots: pb.issuance, Intermediates: inter}); err != nil {
		t.Errorf("served chain does not verify against Pebble's root: %v", err)
	}
	if v := testutil.ToFloat64(follower.mgr.Metrics().Challenges.WithLabelValues("answered")); v < 1 {
		t.Errorf("the follower answered %v TLS-ALPN-01 challenges; Pebble validated elsewhere?", v)
	}
	if events(follower, "cert_obtaining") != 0 {
		t.Error("the follower ordered")
	}
	// The event is counted by certmagic's event callback, which may run a
	// moment after the certificate is served: poll for it.
	testkit.WaitFor(t, 30*time.Second, "the leader to count its certificate obtained", func() bool { return events(leader, "cert_obtained") >= 1 })
	if n := events(leader, "cert_obtained"); n != 1 {
		t.Errorf("leader obtained %v certificates, want 1", n)
	}
	// A name nobody manages gets the fallback (file) certificate.
	if isPebbleIssued(follower.served(t, "other.example.test")) {
		t.Error("unmanaged name got an ACME certificate")
	}

	// Renewal on the leader replaces the certificate everywhere.
	if err := leader.mgr.Renew(ctxT(t), name); err != nil {
		t.Fatalf("renew: %v", err)
	}
	testkit.WaitFor(t, 2*time.Minute, "the renewed certificate on the leader", func() bool { return fingerprint(leader.served(t, name)) != first })
	renewed := fingerprint(leader.served(t, name))
	testkit.WaitFor(t, 30*time.Second, "the renewed certificate on the follower", func() bool { return fingerprint(follower.served(t, name)) == renewed })
	if err := follower.mgr.Renew(ctxT(t), name); err != certs.ErrNotLeader {
		t.Errorf("follower Renew: %v, want ErrNotLeader", err)
	}
}

// TestACMEOnDemand: an unknown name seen in SNI on a follower is checked
// with the app server; approved, the leader orders it and the follower's
// handshake gets it; refused names and rate-limited clients get the
// fallback certificate and never reach the CA.
func TestACMEOnDemand(t *testing.T) {
	for name, store := range fleetStores {
		t.Run(name, func(t *testing.T) { testOnDemand(t, store(t)) })
	}
}

func testOnDemand(t *testing.T, openKV func() certs.KV) {
	lnLeader, lnFollower := listenTCP(t), listenTCP(t)
	pb := startPebble(t, testkit.FreePort(t, "127.0.0.1"), true) // validation skipped: this test is about the decision
	var asks atomic.Int64
	var mu sync.Mutex
	asked := map[string]int{}
	ask := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asks.Add(1)
		d := r.URL.Query().Get("domain")
		mu.Lock()
		asked[d]++
		mu.Unlock()
		if strings.HasPrefix(d, "ok") {
			w.WriteHeader(200)
			return
		}
		w.WriteHeader(404)
	}))
	defer ask.Close()
	base := certs.Options{CA: pb.dir, CARoots: pb.roots, OnDemandWait: time.Minute,
		Ask: &certs.AskOptions{URL: ask.URL + "/check", PerClient: 4, Global: 100, Window: time.Hour}}
	fo := base
	fo.NodeID = "follower"
	follower := startFleetNode(t, lnFollower, openKV(), fo)
	lo := base
	lo.NodeID, lo.Leader = "leader", true
	leader := startFleetNode(t, lnLeader, openKV(), lo)

	// Approved: the handshake on the follower waits for the leader's order.
	c := follower.served(t, "ok-shop.example.test")
	if !isPebbleIssued(c) || c.VerifyHostname("ok-shop.example.test") != nil {
		t.Fatalf("on-demand name got %s / %v", c.Issuer.CommonName, c.DNSNames)
	}
	testkit.WaitFor(t, 30*time.Second, "the leader to serve it too", func() bool { return leader.mgr.Has("ok-shop.example.test") })
	// Refused: fallback certificate, asked once, then cached.
	for range 3 {
		if isPebbleIssued(follower.served(t, "no-shop.example.test")) {
			t.Fatal("refused name got an ACME certificate")
		}
	}
	mu.Lock()
	if asked["no-shop.example.test"] != 1 || asked["ok-shop.example.test"] != 1 {
		t.Errorf("asks: %v (each name should be asked once)", asked)
	}
	mu.Unlock()
	// Invalid names never reach the app server.
	before := asks.Load()
	for _, n := range []string{"127.0.0.1", "*.example.test", "localhost", "a..b.test"} {
		if isPebbleIssued(follower.served(t, n)) {
			t.Errorf("%q got an ACME certificate", n)
		}
	}
	if asks.Load() != before {
		t.Error("invalid names were asked about")
	}
	// Rate limit: this client has used 2 of its 4 asks; a scan of new
	// names gets 2 more asks, then nothing reaches the app server.
	for i := range 10 {
		follower.served(t, "scan"+string(rune('a'+i))+".example.test")
	}
	if got := asks.Load() - before; got != 2 {
		t.Errorf("the scan made %d asks, want 2 (the rest of the client's budget)", got)
	}
	if v := testutil.ToFloat64(follower.mgr.Metrics().Decisions.WithLabelValues("rate_limited")); v != 8 {
		t.Errorf("rate-limited decisions: %v, want 8", v)
	}
	// The event is counted by certmagic's event callback, which may run a
	// moment after the certificate is served: poll for it.
	testkit.WaitFor(t, 30*time.Second, "the leader to count its certificate obtained", func() bool { return events(leader, "cert_obtained") >= 1 })
	if n := events(leader, "cert_obtained"); n != 1 {
		t.Errorf("leader obtained %v certificates, want 1", n)
	}
}
