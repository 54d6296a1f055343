package certs_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/certs"
	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
)

// fleetDB is the fleet storage as a node has it: an embedded FerretDB, the
// Mongo proxy in front of it, and the fleet collection reached through the
// proxy's in-process connection (Proxy.DialInternal), the only one allowed
// into the reserved namespace. upstream is the database itself, as a dump
// or a backup reads it.
type fleetDB struct {
	coll     *mongo.Collection
	upstream *mongo.Collection
}

func startFleetDB(t *testing.T) *fleetDB {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	db, err := embedded.Start(ctx, filepath.Join(dir, "mongo"), testLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Stop)
	proxy, err := mongoproxy.New(mongoproxy.Options{Listen: "127.0.0.1:0", Upstream: db.URI(), NodeID: "n1", DataDir: dir,
		SyncDatabase: db.Sync}, testLog(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := proxy.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Shutdown(context.Background()) })
	client, err := mongo.Connect(options.Client().ApplyURI("mongodb://edgenode-internal/?directConnection=true").
		SetDialer(dialerFunc(proxy.DialInternal)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	direct, err := mongo.Connect(options.Client().ApplyURI(db.URI()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = direct.Disconnect(context.Background()) })
	return &fleetDB{
		coll:     client.Database("edgenode_fleet").Collection("tls"),
		upstream: direct.Database("edgenode_fleet").Collection("tls"),
	}
}

// dump is every stored document, as raw BSON, read from the database
// without the proxy.
func (f *fleetDB) dump(t *testing.T) map[string]bson.Raw {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cur, err := f.upstream.Find(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close(ctx)
	out := map[string]bson.Raw{}
	for cur.Next(ctx) {
		id, _ := cur.Current.Lookup("_id").StringValueOK()
		out[id] = append(bson.Raw(nil), cur.Current...)
	}
	if err := cur.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// dialerFunc makes a function the driver's dialer.
type dialerFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialerFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

func testKeyPEM(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	der, err := x509.MarshalECPrivateKey(k)
	must(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// TestMongoKVSecretsEncryptedAtRest plays someone holding a copy of the
// database (a dump, a backup, the SQLite files, a local account that reaches
// the database): the fleet's private keys and session-ticket keys must not
// be readable in it.
func TestMongoKVSecretsEncryptedAtRest(t *testing.T) {
	ctx := context.Background()
	f := startFleetDB(t)
	kv := newMongoKV(t, f.coll, 50*time.Millisecond)
	keyPEM := testKeyPEM(t)
	const keyName = "certificates/acme/fleet.test/fleet.test.key"
	must(t, kv.Put(ctx, keyName, keyPEM))
	must(t, kv.Create(ctx, "acme/account.key", keyPEM))

	var applied [][32]byte
	tk := mustTicketKeys(t, certs.TicketOptions{Leader: true, Period: time.Hour}, kv,
		func(k [][32]byte) { applied = k }, testLog(), prometheus.NewRegistry())
	must(t, tk.Start(ctx))
	tk.Stop()
	if len(applied) == 0 {
		t.Fatal("the leader applied no ticket keys")
	}

	docs := f.dump(t)
	for _, id := range []string{keyName, "acme/account.key", certs.TicketKeyName} {
		if _, ok := docs[id]; !ok {
			t.Fatalf("%s not in the database: %v", id, docs)
		}
	}
	for id, raw := range docs {
		if bytes.Contains(raw, []byte("PRIVATE KEY")) {
			t.Errorf("%s: a private key in the clear in the database: %s", id, raw)
		}
		for _, k := range applied {
			if bytes.Contains(raw, k[:]) || bytes.Contains(raw, []byte(base64.StdEncoding.EncodeToString(k[:]))) {
				t.Errorf("%s: a session-ticket key in the clear in the database", id)
			}
		}
	}
	// The KV still returns what was stored.
	if got, err := kv.Get(ctx, keyName); err != nil || !bytes.Equal(got, keyPEM) {
		t.Errorf("Get after Put: %q %v", got, err)
	}
	if st, err := kv.Stat(ctx, keyName); err != nil || st.Size != int64(len(keyPEM)) {
		t.Errorf("Stat: %+v %v, want the size of the value stored (%d)", st, err, len(keyPEM))
	}
}

// TestMongoKVRefusesForgedValues plays someone who can write the database
// (a local account that reached it, a restored tampered backup): a value
// written there, or moved from another key, must not be served as the
// fleet's material.
func TestMongoKVRefusesForgedValues(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	f := startFleetDB(t)
	kv := newMongoKV(t, f.coll, 50*time.Millisecond)
	must(t, kv.Put(ctx, "certificates/a/a.key", testKeyPEM(t)))
	must(t, kv.Put(ctx, "certificates/b/b.key", testKeyPEM(t)))

	set := func(id string, v []byte) {
		t.Helper()
		_, err := f.upstream.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: bson.Binary{Data: v}}}}})
		must(t, err)
	}
	stored := func(id string) []byte {
		t.Helper()
		var d struct {
			V []byte `bson:"v"`
		}
		must(t, f.upstream.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d))
		return d.V
	}

	// A value of the attacker's own, written straight to the database.
	forged := testKeyPEM(t)
	set("certificates/a/a.key", forged)
	if got, err := kv.Get(ctx, "certificates/a/a.key"); err == nil {
		t.Errorf("a value written straight to the database was served (%d bytes, forged: %v)", len(got), bytes.Equal(got, forged))
	} else if !strings.Contains(err.Error(), "certificates/a/a.key") {
		t.Errorf("the error does not name the key: %v", err)
	}

	// b's stored value moved under a's name.
	set("certificates/a/a.key", stored("certificates/b/b.key"))
	if got, err := kv.Get(ctx, "certificates/a/a.key"); err == nil {
		t.Errorf("a value moved from another key was served (%d bytes)", len(got))
	}

	// One bit of b's stored value flipped.
	v := stored("certificates/b/b.key")
	v[len(v)-1] ^= 1
	set("certificates/b/b.key", v)
	if _, err := kv.Get(ctx, "certificates/b/b.key"); err == nil {
		t.Error("a tampered value was served")
	} else if !strings.Contains(err.Error(), "tampered") {
		t.Errorf("the error does not say what is wrong: %v", err)
	}
}

// TestMongoKVOtherSecret: a node given another fleet secret than the one
// that wrote (a misconfigured clone, or an attacker's node joined to the
// database) reads an error that says so, never bytes.
func TestMongoKVOtherSecret(t *testing.T) {
	ctx := context.Background()
	f := startFleetDB(t)
	a := newMongoKV(t, f.coll, 50*time.Millisecond)
	b := newMongoKVWith(t, f.coll, 50*time.Millisecond, "another secret, as long as the first one")
	must(t, a.Put(ctx, "acme/account.key", testKeyPEM(t)))
	got, err := b.Get(ctx, "acme/account.key")
	if !errors.Is(err, certs.ErrCannotDecrypt) || got != nil {
		t.Fatalf("Get with another secret: %q, %v", got, err)
	}
	for _, want := range []string{"acme/account.key", "fleet secret differs between nodes or the value was tampered with"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// A value from before sealing (no version prefix) is an error too.
	_, err = f.upstream.InsertOne(ctx, bson.D{{Key: "_id", Value: "old/plain"}, {Key: "v", Value: bson.Binary{Data: []byte("-----BEGIN")}},
		{Key: "size", Value: int64(10)}, {Key: "mod", Value: time.Now()}, {Key: "rev", Value: int64(1)}})
	must(t, err)
	if got, err := a.Get(ctx, "old/plain"); !errors.Is(err, certs.ErrNotSealed) || !strings.Contains(err.Error(), "old/plain") {
		t.Errorf("Get of a value without the version prefix: %q, %v", got, err)
	}
	// Empty values round-trip (sealed, they are not empty).
	must(t, a.Put(ctx, "empty", nil))
	if got, err := a.Get(ctx, "empty"); err != nil || len(got) != 0 {
		t.Errorf("empty value: %q %v", got, err)
	}
}

func TestNewMongoKVShortSecret(t *testing.T) {
	for _, s := range []string{"", "short", testSecret[:certs.MinSecretLen-1]} {
		if _, err := certs.NewMongoKV([]byte(s), 0, testLog()); err == nil {
			t.Errorf("secret of %d bytes accepted", len(s))
		}
	}
}
