package testkit

import (
	"testing"
	"time"
)

// WaitFor polls cond until it holds or timeout passes, then fails the test
// naming what it waited for. It is for states reached in the background,
// never for timing: pick a timeout generous enough for a loaded machine.
//
// The first polls come quickly and the interval grows to 50ms, so a
// condition that is cheap and soon true costs little, and one that queries
// a server does not hammer it.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// Poll reports whether cond held before timeout passed, polling as WaitFor
// does: for a test that reports a missed state with t.Errorf and goes on.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	interval := 2 * time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
		interval = min(2*interval, 50*time.Millisecond)
	}
}
