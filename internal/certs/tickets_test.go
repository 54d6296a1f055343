package certs_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/certs"
	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/edgenode/edgenode/internal/transport"
)

// ticketNode is a transport server whose ticket keys come from TicketKeys.
type ticketNode struct {
	srv  *transport.Server
	keys *certs.TicketKeys
	addr string
}

func startTicketNode(t *testing.T, kv certs.KV, leader bool) *ticketNode {
	t.Helper()
	ln := listenTCP(t)
	dir := t.TempDir()
	cf, kf, err := transport.EnsureSelfSigned(dir, nil, testLog())
	must(t, err)
	store, err := transport.NewCertStore([]transport.CertSource{{CertFile: cf, KeyFile: kf}}, testLog())
	must(t, err)
	reg := prometheus.NewRegistry()
	srv, err := transport.New(transport.Options{Listener: ln, Certs: store,
		App:    http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}),
		Limits: transport.Limits{MaxHeaderBytes: 8 << 10, ReadHeaderTimeout: 10 * time.Second}}, testLog(), reg)
	must(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	tk := mustTicketKeys(t, certs.TicketOptions{Leader: leader, Period: time.Hour}, kv, srv.SetSessionTicketKeys, testLog(), reg)
	must(t, tk.Start(context.Background()))
	t.Cleanup(func() {
		tk.Stop()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	})
	return &ticketNode{srv: srv, keys: tk, addr: ln.Addr().String()}
}

// resumes connects to addr with cache and reports whether TLS resumed. A
// request makes sure the TLS 1.3 ticket sent after the handshake is read.
// The fixed ServerName is the client's session-cache key, so a ticket from
// one node is offered to the other (as a browser does for one host name).
func resumes(t *testing.T, addr string, cache tls.ClientSessionCache) bool {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "fleet.test", InsecureSkipVerify: true, ClientSessionCache: cache, NextProtos: []string{"http/1.1"}})
	must(t, err)
	defer c.Close()
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	must(t, err)
	resp.Body.Close()
	return c.ConnectionState().DidResume
}

// TestTicketKeysAcrossNodes: the leader's keys reach the follower through
// the KV, so a session from one node resumes on the other; after one
// rotation old tickets still resume (previous key kept), after two they
// do not.
func TestTicketKeysAcrossNodes(t *testing.T) {
	kv := certs.NewMemKV()
	follower := startTicketNode(t, kv, false) // starts before any key exists
	leader := startTicketNode(t, kv, true)

	cache := tls.NewLRUClientSessionCache(4)
	if resumes(t, leader.addr, cache) {
		t.Fatal("first handshake resumed")
	}
	testkit.WaitFor(t, 10*time.Second, "the follower to apply the keys", func() bool {
		c2 := tls.NewLRUClientSessionCache(4)
		resumes(t, leader.addr, c2)
		return resumes(t, follower.addr, c2)
	})
	// One session from the leader; it must survive one rotation anywhere.
	old := tls.NewLRUClientSessionCache(4)
	resumes(t, leader.addr, old)
	must(t, leader.keys.Rotate(context.Background()))
	testkit.WaitFor(t, 10*time.Second, "a session after the rotation to resume on the follower", func() bool {
		c3 := tls.NewLRUClientSessionCache(4)
		resumes(t, leader.addr, c3)
		return resumes(t, follower.addr, c3)
	})
	if !resumes(t, follower.addr, old) {
		t.Error("a ticket from before one rotation did not resume")
	}
	// A fresh old-key session, then two rotations: it is gone.
	older := tls.NewLRUClientSessionCache(4)
	resumes(t, follower.addr, older) // the follower's ticket (current key, about to become old)
	must(t, leader.keys.Rotate(context.Background()))
	must(t, leader.keys.Rotate(context.Background()))
	testkit.WaitFor(t, 10*time.Second, "the follower to drop the key", func() bool {
		return !resumes(t, follower.addr, older)
	})
	if err := follower.keys.Rotate(context.Background()); err != certs.ErrNotLeader {
		t.Errorf("follower Rotate: %v", err)
	}
}

// refusingKV refuses writes until allowed, as the replicated storage does
// while its node is not yet a synced replica.
type refusingKV struct {
	certs.KV
	allow   atomic.Bool
	refused atomic.Int32 // writes refused so far
}

func (k *refusingKV) Put(ctx context.Context, key string, v []byte) error {
	if !k.allow.Load() {
		k.refused.Add(1)
		return errors.New("writes held: replication is starting")
	}
	return k.KV.Put(ctx, key, v)
}

// TestTicketLeaderRetriesRefusedStorage: a leader whose storage refuses
// writes at start still starts (with its own keys) and stores the
// cluster's keys once the storage takes writes.
func TestTicketLeaderRetriesRefusedStorage(t *testing.T) {
	kv := &refusingKV{KV: certs.NewMemKV()}
	reg := prometheus.NewRegistry()
	var applied atomic.Int32
	tk := mustTicketKeys(t, certs.TicketOptions{Leader: true, Period: time.Hour, RetryInterval: 20 * time.Millisecond}, kv,
		func([][32]byte) { applied.Add(1) }, testLog(), reg)
	must(t, tk.Start(context.Background()))
	defer tk.Stop()
	// Start's attempt and a retry after it were refused: the keys had
	// their chances to be applied while the storage refused them.
	testkit.WaitFor(t, 10*time.Second, "a retried write refused", func() bool { return kv.refused.Load() >= 2 })
	if applied.Load() != 0 {
		t.Fatal("keys applied while the storage refused them")
	}
	kv.allow.Store(true)
	testkit.WaitFor(t, 10*time.Second, "the keys stored and applied", func() bool { return applied.Load() == 1 })
	if _, err := kv.Get(context.Background(), certs.TicketKeyName); err != nil {
		t.Fatal(err)
	}
}

func mustTicketKeys(t testing.TB, opts certs.TicketOptions, kv certs.KV, apply func([][32]byte), log *slog.Logger, reg prometheus.Registerer) *certs.TicketKeys {
	t.Helper()
	tk, err := certs.NewTicketKeys(opts, kv, apply, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}
