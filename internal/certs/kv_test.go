package certs_test

import (
	"context"
	"errors"
	"io/fs"
	"reflect"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/certs"
)

func kvs(t *testing.T) map[string]certs.KV {
	f, err := certs.NewFileKV(t.TempDir(), 50*time.Millisecond, testLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return map[string]certs.KV{"mem": certs.NewMemKV(), "file": f, "mongo": newMongoKV(t, mongoCollection(t), 50*time.Millisecond)}
}

// mongoCollection is the fleet collection through a real Mongo proxy in
// front of an embedded FerretDB, reached as a node reaches it (the proxy
// captures every write of the KV).
func mongoCollection(t *testing.T) *mongo.Collection { return startFleetDB(t).coll }

// testSecret is a fleet secret of the minimum length.
const testSecret = "0123456789abcdef0123456789abcdef"

func newMongoKV(t *testing.T, coll *mongo.Collection, interval time.Duration) *certs.MongoKV {
	return newMongoKVWith(t, coll, interval, testSecret)
}

func newMongoKVWith(t *testing.T, coll *mongo.Collection, interval time.Duration, secret string) *certs.MongoKV {
	t.Helper()
	kv, err := certs.NewMongoKV([]byte(secret), interval, testLog())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(context.Background(), "a"); !errors.Is(err, certs.ErrNotStarted) {
		t.Fatalf("before Start: %v", err)
	}
	kv.Start(coll)
	t.Cleanup(func() { kv.Close() })
	return kv
}

func TestKVContract(t *testing.T) {
	ctx := context.Background()
	for name, kv := range kvs(t) {
		t.Run(name, func(t *testing.T) {
			ch, cancel := kv.Subscribe("a")
			defer cancel()
			if _, err := kv.Get(ctx, "a/b"); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("missing key: %v", err)
			}
			must(t, kv.Put(ctx, "a/b", []byte("1")))
			must(t, kv.Put(ctx, "a/c/d", []byte("22")))
			must(t, kv.Put(ctx, "ab", []byte("x"))) // not under "a"
			<-ch
			if err := kv.Create(ctx, "a/b", []byte("2")); !errors.Is(err, fs.ErrExist) {
				t.Errorf("Create over a key: %v", err)
			}
			must(t, kv.Create(ctx, "a/e", []byte("3")))
			if b, _ := kv.Get(ctx, "a/b"); string(b) != "1" {
				t.Errorf("Get: %q", b)
			}
			keys, err := kv.List(ctx, "a")
			must(t, err)
			if want := []string{"a/b", "a/c/d", "a/e"}; !reflect.DeepEqual(keys, want) {
				t.Errorf("List: %v, want %v", keys, want)
			}
			if st, err := kv.Stat(ctx, "a/c/d"); err != nil || st.Size != 2 {
				t.Errorf("Stat: %+v %v", st, err)
			}
			must(t, kv.Delete(ctx, "a/c"))
			if _, err := kv.Get(ctx, "a/c/d"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Delete is not recursive: %v", err)
			}
			must(t, kv.Delete(ctx, "nothing/here"))
			for _, bad := range []string{"", "/a", "a/", "a//b", "a/../b", "./a"} {
				if kv.Put(ctx, bad, nil) == nil {
					t.Errorf("Put accepted key %q", bad)
				}
			}
		})
	}
}

// TestKVSeesOthersWrites: two KVs on one store (two processes sharing a
// folder; the clients of a node and the replication layer on one replica)
// see each other's writes through their change signals.
func TestKVSeesOthersWrites(t *testing.T) {
	dir := t.TempDir()
	coll := mongoCollection(t)
	pairs := map[string]func() certs.KV{
		"file": func() certs.KV {
			f, err := certs.NewFileKV(dir, 20*time.Millisecond, testLog())
			must(t, err)
			t.Cleanup(func() { f.Close() })
			return f
		},
		"mongo": func() certs.KV { return newMongoKV(t, coll, 20*time.Millisecond) },
	}
	for name, open := range pairs {
		t.Run(name, func(t *testing.T) {
			a, b := open(), open()
			ch, cancel := b.Subscribe("certificates")
			defer cancel()
			ctx := context.Background()
			must(t, a.Put(ctx, "certificates/x/y.crt", []byte("pem")))
			waitSignal(t, ch)
			if v, err := b.Get(ctx, "certificates/x/y.crt"); err != nil || string(v) != "pem" {
				t.Fatalf("b sees %q %v", v, err)
			}
			must(t, a.Put(ctx, "certificates/x/y.crt", []byte("pem"))) // same bytes, new write
			waitSignal(t, ch)
			must(t, a.Delete(ctx, "certificates/x"))
			waitSignal(t, ch)
			if _, err := b.Get(ctx, "certificates/x/y.crt"); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("delete not seen: %v", err)
			}
		})
	}
}

func waitSignal(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no change signal within 10s")
	}
}

func TestStorageListStatAndLocks(t *testing.T) {
	ctx := context.Background()
	kv := certs.NewMemKV()
	leader := certs.NewStorage(kv, true, "a")
	other := certs.NewStorage(kv, true, "b")
	follower := certs.NewStorage(kv, false, "c")
	must(t, leader.Store(ctx, "certificates/ca/x.test/x.test.crt", []byte("1")))
	must(t, leader.Store(ctx, "certificates/ca/y.test/y.test.crt", []byte("2")))
	got, err := leader.List(ctx, "certificates/ca", false)
	must(t, err)
	if want := []string{"certificates/ca/x.test", "certificates/ca/y.test"}; !reflect.DeepEqual(got, want) {
		t.Errorf("List: %v", got)
	}
	if ki, err := leader.Stat(ctx, "certificates/ca"); err != nil || ki.IsTerminal {
		t.Errorf("Stat of a folder: %+v %v", ki, err)
	}
	if !leader.Exists(ctx, "certificates/ca/x.test/x.test.crt") || leader.Exists(ctx, "nope") {
		t.Error("Exists")
	}
	if err := follower.Lock(ctx, "issue_cert_x.test"); !errors.Is(err, certs.ErrNotLeader) {
		t.Errorf("follower Lock: %v", err)
	}
	must(t, leader.Lock(ctx, "issue_cert_x.test"))
	// A second holder waits until the first unlocks.
	short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	if err := other.Lock(short, "issue_cert_x.test"); err == nil {
		t.Error("two holders of one lock")
	}
	cancel()
	must(t, leader.Unlock(ctx, "issue_cert_x.test"))
	must(t, other.Lock(ctx, "issue_cert_x.test"))
	must(t, other.Unlock(ctx, "issue_cert_x.test"))
	// A lock left by a crashed holder (expired) is taken over.
	must(t, kv.Put(ctx, "locks/issue_cert_y.test", []byte(`{"owner":"dead","expires":"2000-01-01T00:00:00Z"}`)))
	must(t, leader.Lock(ctx, "issue_cert_y.test"))
	leader.Close()
	if _, err := kv.Get(ctx, "locks/issue_cert_y.test"); !errors.Is(err, fs.ErrNotExist) {
		t.Error("Close left a lock behind")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
