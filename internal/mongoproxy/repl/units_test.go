package repl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

func ts(w int64) crdt.Timestamp { return crdt.Timestamp{Wall: w, Node: "x"} }

// The safe frontier of an origin moves only to announcements whose ops are
// all applied here.
func TestHeartbeatQueue(t *testing.T) {
	var q hbQueue
	q.push(ts(10), 5)
	q.push(ts(20), 9)
	q.push(ts(30), 9) // same last, newer frontier: kept (idle origin)
	q.advance(4)
	if !q.safe.IsZero() {
		t.Fatalf("safe %v with nothing covered", q.safe)
	}
	q.advance(5)
	if q.safe != ts(10) {
		t.Fatalf("safe %v, want 10", q.safe)
	}
	q.advance(9)
	if q.safe != ts(30) || len(q.pending) != 0 {
		t.Fatalf("safe %v pending %d, want 30 and none", q.safe, len(q.pending))
	}
	for i := range 3 * hbQueueMax {
		q.push(ts(int64(100+i)), uint64(100+i))
	}
	if len(q.pending) > hbQueueMax {
		t.Fatalf("queue grew to %d", len(q.pending))
	}
	q.advance(1 << 20)
	if q.safe != ts(int64(100+3*hbQueueMax-1)) {
		t.Fatalf("safe %v after catching up", q.safe)
	}
}

func TestIncarnation(t *testing.T) {
	dir := t.TempDir()
	o1, err := Incarnation(dir, "node1")
	if err != nil || !strings.HasPrefix(o1, "node1~") || NodeOf(o1) != "node1" {
		t.Fatalf("new folder: %q %v", o1, err)
	}
	if o2, err := Incarnation(dir, "node1"); err != nil || o2 != o1 {
		t.Fatalf("same folder again: %q %v", o2, err)
	}
	if _, err := Incarnation(dir, "node2"); err == nil {
		t.Fatal("a folder of node1 accepted for node2")
	}
	// A folder from before incarnations (an op log, no origin file) keeps
	// the plain node id.
	old := t.TempDir()
	if err := os.WriteFile(filepath.Join(old, "oplog.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if o, err := Incarnation(old, "node1"); err != nil || o != "node1" {
		t.Fatalf("old folder: %q %v", o, err)
	}
	// A wiped folder gets a new one.
	wiped := t.TempDir()
	if o, err := Incarnation(wiped, "node1"); err != nil || o == "node1" || !strings.HasPrefix(o, "node1~") {
		t.Fatalf("wiped folder: %q %v", o, err)
	}
}
