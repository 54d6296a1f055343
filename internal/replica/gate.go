package replica

import (
	"sync"
	"sync/atomic"
)

// gate admits captured writes and DDL (shared) unless writes are blocked,
// and lets BlockWrites wait for those in progress (exclusive, for an
// instant: a barrier).
type gate struct {
	check   *rankChecker
	mu      sync.RWMutex
	blocked atomic.Pointer[string] // the reason writes are refused (nil: accepted)
	exitFn  func()                 // g.exit, bound once (enter returns it)
}

func (g *gate) enter() (done func(), err error) {
	g.check.acquire(rankGate)
	g.mu.RLock()
	if r := g.blocked.Load(); r != nil {
		g.mu.RUnlock()
		g.check.release(rankGate)
		return nil, &BlockedError{Reason: *r}
	}
	if g.exitFn == nil {
		panic("replica: gate not initialized")
	}
	return g.exitFn, nil
}

func (g *gate) exit() {
	g.mu.RUnlock()
	g.check.release(rankGate)
}

func (g *gate) block(reason string) { g.blocked.Store(&reason) }

// wait returns once every write admitted before it has finished.
func (g *gate) wait() {
	g.check.acquire(rankGate)
	defer g.check.release(rankGate)
	g.mu.Lock()   // waits for writes in flight (they hold the gate shared)
	g.mu.Unlock() //lint:ignore SA2001 the empty section is the point: a barrier
}

// Admit lets one captured write or DDL command through the write gate.
func (r *Replica) Admit() (done func(), err error) { return r.gate.enter() }

// BlockWrites makes Admit refuse captured writes (and replicated DDL)
// with reason, and waits until those already in progress have finished.
// Reads and local-only collections are not affected (the front-end does
// not ask the gate for them).
func (r *Replica) BlockWrites(reason string) {
	r.gate.block(reason)
	r.gate.wait()
}

// AllowWrites undoes BlockWrites (and Config.HoldWrites).
func (r *Replica) AllowWrites() { r.gate.blocked.Store(nil) }

// WritesBlocked returns the reason writes are refused ("" when accepted).
func (r *Replica) WritesBlocked() string {
	if p := r.gate.blocked.Load(); p != nil {
		return *p
	}
	return ""
}
