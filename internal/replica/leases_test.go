package replica

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitGranted reports whether done closes within a generous deadline.
func waitGranted(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	case <-time.After(30 * time.Second):
		return false
	}
}

// TestLeaseExclusive: a held key's second exclusive turn waits for the
// first to end; other keys do not.
func TestLeaseExclusive(t *testing.T) {
	var check rankChecker
	lt := newLeaseTable(rankDocument, &check)
	first := lt.acquire(true, "a")
	other := make(chan struct{})
	go func() { lt.acquire(true, "b").release(); close(other) }()
	if !waitGranted(other) {
		t.Fatal("a lease on another key waited")
	}
	got := make(chan struct{})
	var after atomic.Bool
	go func() {
		r := lt.acquire(true, "a")
		if !after.Load() {
			t.Error("second turn granted while the first was held")
		}
		r.release()
		close(got)
	}()
	// Positive signal that the second is queued before the first ends.
	for deadline := time.Now().Add(30 * time.Second); ; {
		lt.mu.Lock()
		queued := len(lt.held["a"].queue)
		lt.mu.Unlock()
		if queued == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second turn never queued")
		}
		time.Sleep(time.Millisecond)
	}
	after.Store(true)
	first.release()
	if !waitGranted(got) {
		t.Fatal("the second turn was never granted")
	}
	lt.mu.Lock()
	defer lt.mu.Unlock()
	if len(lt.held) != 0 {
		t.Fatalf("keys left in the table: %v", lt.held)
	}
}

// TestLeaseSharedAndExclusive: shared turns coexist; an exclusive one
// waits for them and holds back shared turns asked after it (FIFO, as
// sync.RWMutex).
func TestLeaseSharedAndExclusive(t *testing.T) {
	var check rankChecker
	lt := newLeaseTable(rankNamespace, &check)
	r1 := lt.acquire(false, "ns")
	// A second shared holder, on its own goroutine (one goroutine holds
	// one set of turns of a table at a time).
	held2, end2, done2 := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		r := lt.acquire(false, "ns")
		close(held2)
		<-end2
		r.release()
		close(done2)
	}()
	<-held2
	var order []string
	var mu sync.Mutex
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	queued := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; {
			lt.mu.Lock()
			q := len(lt.held["ns"].queue)
			lt.mu.Unlock()
			if q == n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("queue never reached %d", n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	exclDone, sharedDone := make(chan struct{}), make(chan struct{})
	go func() { r := lt.acquire(true, "ns"); note("exclusive"); r.release(); close(exclDone) }()
	queued(1)
	go func() { r := lt.acquire(false, "ns"); note("shared"); r.release(); close(sharedDone) }()
	queued(2)
	r1.release()
	close(end2)
	<-done2
	if !waitGranted(exclDone) || !waitGranted(sharedDone) {
		t.Fatal("turns never granted")
	}
	if fmt.Sprint(order) != "[exclusive shared]" {
		t.Fatalf("grant order %v", order)
	}
}

// TestLeaseNoDeadlock: many goroutines taking random sets of keys (in the
// table's one order) all finish, and no two ever hold one key.
func TestLeaseNoDeadlock(t *testing.T) {
	var check rankChecker
	lt := newLeaseTable(rankDocument, &check)
	var holders [16]atomic.Int32
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 300 {
				n := 1 + rng.IntN(5)
				keys := make([]string, n)
				idx := make([]int, n)
				for i := range keys {
					idx[i] = rng.IntN(len(holders))
					keys[i] = fmt.Sprint("k", idx[i])
				}
				held := lt.acquire(true, keys...)
				seen := map[int]bool{}
				for _, i := range idx {
					if !seen[i] {
						seen[i] = true
						if holders[i].Add(1) != 1 {
							t.Errorf("key k%d held twice", i)
						}
					}
				}
				for i := range seen {
					holders[i].Add(-1)
				}
				held.release()
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	if !waitGranted(done) {
		t.Fatal("deadlock: lease holders never finished")
	}
}
