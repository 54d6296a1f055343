package certs_test

import (
	"context"
	"errors"
	"io/fs"
	"reflect"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/certs"
)

func kvs(t *testing.T) map[string]certs.KV {
	f, err := certs.NewFileKV(t.TempDir(), 50*time.Millisecond, testLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return map[string]certs.KV{"mem": certs.NewMemKV(), "file": f}
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

// TestFileKVSharedFolder: two FileKVs on one folder (two processes in
// production) see each other's writes through their change signals.
func TestFileKVSharedFolder(t *testing.T) {
	dir := t.TempDir()
	a, err := certs.NewFileKV(dir, 20*time.Millisecond, testLog())
	must(t, err)
	defer a.Close()
	b, err := certs.NewFileKV(dir, 20*time.Millisecond, testLog())
	must(t, err)
	defer b.Close()
	ch, cancel := b.Subscribe("certificates")
	defer cancel()
	ctx := context.Background()
	must(t, a.Put(ctx, "certificates/x/y.crt", []byte("pem")))
	<-ch
	if v, err := b.Get(ctx, "certificates/x/y.crt"); err != nil || string(v) != "pem" {
		t.Fatalf("b sees %q %v", v, err)
	}
	must(t, a.Delete(ctx, "certificates/x"))
	<-ch
	if _, err := b.Get(ctx, "certificates/x/y.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("delete not seen: %v", err)
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
