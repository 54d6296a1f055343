//go:build race || lockrank

package replica

import (
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// The lock order (write gate, settle turn, namespace, document leases, leaf mutexes) is
// checked in race and lockrank builds: taking a turn out of order panics.

func newTestReplica() *Replica {
	met, _ := NewMetrics(nil)
	r := &Replica{clock: crdt.NewClock("n1", nil), drops: drops{m: map[string]crdt.Timestamp{}}, cache: newDocCache(16<<10, met)}
	r.gate.check, r.holds.check, r.drops.check, r.subs.check, r.groups.check = &r.check, &r.check, &r.check, &r.check, &r.check
	r.unstored.check, r.unstored.added = &r.check, make(chan struct{}, 1)
	r.gate.exitFn = r.gate.exit
	r.nss = newLeaseTable(rankNamespace, &r.check)
	r.docs = newLeaseTable(rankDocument, &r.check)
	r.cache.docs = r.docs
	return r
}

func mustPanic(t *testing.T, want string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		v := recover()
		if v == nil {
			t.Fatalf("no panic; want one mentioning %q", want)
		}
		if s, _ := v.(string); !strings.Contains(s, want) {
			t.Fatalf("panic %v; want one mentioning %q", v, want)
		}
	}()
	f()
}

func TestLockOrderInOrder(t *testing.T) {
	r := newTestReplica()
	done, err := r.Admit()
	if err != nil {
		t.Fatal(err)
	}
	ns := r.nss.acquire(false, "db.c")
	key := docKey("db.c", bson.RawValue{Type: bson.TypeString, Value: []byte{2, 0, 0, 0, 'a', 0}})
	docs := r.docs.acquire(true, docKey("db.c", bson.RawValue{Type: bson.TypeString, Value: []byte{2, 0, 0, 0, 'b', 0}}), key)
	unhold := r.hold()
	_ = r.drops.get("db.c")
	_, _ = r.cache.get(key)
	unhold()
	docs.release()
	ns.release()
	done()
}

func TestLockOrderNamespaceUnderDocument(t *testing.T) {
	r := newTestReplica()
	doc := r.docs.acquire(true, "db.c\x00sa")
	defer doc.release()
	mustPanic(t, "taking a namespace while holding a document lease", func() { r.nss.acquire(true, "db.c") })
}

func TestLockOrderGateUnderNamespace(t *testing.T) {
	r := newTestReplica()
	ns := r.nss.acquire(false, "db.c")
	defer ns.release()
	mustPanic(t, "taking a write gate while holding a namespace", func() { _, _ = r.Admit() })
	mustPanic(t, "taking a write gate while holding a namespace", func() { r.BlockWrites("test") })
}

// Settle takes its turn admitted and before any namespace: a writer that
// held one while waiting for a Settle could wait for itself (the Settle
// in progress needs the namespace).
func TestLockOrderSettleUnderNamespace(t *testing.T) {
	r := newTestReplica()
	r.unstored.add([]*crdt.Op{{Origin: "n1", Seq: 1}}, nil)
	ns := r.nss.acquire(false, "db.c")
	defer ns.release()
	mustPanic(t, "taking a settle turn while holding a namespace", func() { _ = r.Settle(t.Context()) })
}

func TestLockOrderTwoDocumentAcquisitions(t *testing.T) {
	r := newTestReplica()
	doc := r.docs.acquire(true, "db.c\x00sa")
	defer doc.release()
	// A second set of leases while holding one could wait in a cycle with
	// another writer: all of a write's documents are taken in one call.
	mustPanic(t, "taking a document lease while holding a document lease", func() { r.docs.acquire(true, "db.c\x00sb") })
}

func TestCacheNeedsTheLease(t *testing.T) {
	r := newTestReplica()
	key := "db.c\x00sa"
	mustPanic(t, "without the document's lease", func() { _, _ = r.cache.get(key) })
	doc := r.docs.acquire(true, key)
	_, _ = r.cache.get(key)
	doc.release()
	// Held by another goroutine is not held by this one.
	held, done := make(chan struct{}), make(chan struct{})
	go func() {
		doc := r.docs.acquire(true, key)
		close(held)
		<-done
		doc.release()
	}()
	<-held
	mustPanic(t, "without the document's lease", func() { r.cache.forget(key) })
	close(done)
}
