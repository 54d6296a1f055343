package replica

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/mongoproxy/oplog"
)

// The retryable-write records on a real op log file: the session turn,
// TransactionTooOld, expiry after the session timeout, the space bound and
// reopening. (The proxy's tests cover retries end to end.)

type retryFixture struct {
	t    *testing.T
	path string
	log  *oplog.Log
	r    *Replica
	now  atomic.Int64
}

func newRetryFixture(t *testing.T, max int64) *retryFixture {
	f := &retryFixture{t: t, path: filepath.Join(t.TempDir(), "oplog.db")}
	f.now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	f.open(max)
	t.Cleanup(func() { _ = f.log.Close() })
	return f
}

func (f *retryFixture) open(max int64) {
	var err error
	f.log, err = oplog.Open(oplog.Options{Path: f.path, Origin: "n1"}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		f.t.Fatal(err)
	}
	met, _ := NewMetrics(nil)
	f.r = &Replica{met: met}
	f.r.retry = newRetryStore(f.log, 0, max, &f.r.check, met)
	f.r.retry.now = func() time.Time { return time.Unix(0, f.now.Load()) }
	if err := f.r.retry.load(); err != nil {
		f.t.Fatal(err)
	}
}

func (f *retryFixture) reopen(max int64) {
	if err := f.log.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.open(max)
}

// record runs txn of session lsid and records results for stmts.
func (f *retryFixture) record(lsid string, txn int64, result []byte, stmts ...int32) {
	f.t.Helper()
	tx, err := f.r.BeginTxn(context.Background(), []byte(lsid), txn)
	if err != nil {
		f.t.Fatal(err)
	}
	defer tx.End()
	var rs []StmtResult
	for _, s := range stmts {
		rs = append(rs, StmtResult{ID: s, Result: result})
	}
	if err := tx.Record(context.Background(), rs); err != nil {
		f.t.Fatal(err)
	}
}

// recorded is what a retry of (lsid, txn, stmt) finds.
func (f *retryFixture) recorded(lsid string, txn int64, stmt int32) ([]byte, error) {
	f.t.Helper()
	tx, err := f.r.BeginTxn(context.Background(), []byte(lsid), txn)
	if err != nil {
		return nil, err
	}
	defer tx.End()
	return tx.Recorded(stmt)
}

func code(err error) int32 {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestRetryTurnAndTooOld(t *testing.T) {
	f := newRetryFixture(t, 0)
	f.record("a", 5, []byte("r5"), 0, 1)
	if v, err := f.recorded("a", 5, 1); err != nil || string(v) != "r5" {
		t.Fatalf("recorded (a, 5, 1) = %q, %v", v, err)
	}
	if v, err := f.recorded("a", 5, 2); err != nil || v != nil {
		t.Fatalf("statement 2 was never run: %q, %v", v, err)
	}
	if _, err := f.recorded("a", 4, 0); code(err) != CodeTransactionTooOld {
		t.Fatalf("txnNumber 4 after 5: %v, want 225", err)
	}
	// A newer txnNumber replaces the session's statements.
	f.record("a", 6, []byte("r6"), 0)
	if v, _ := f.recorded("a", 6, 1); v != nil {
		t.Fatalf("txnNumber 6 statement 1: %q, want nothing", v)
	}
	if _, err := f.recorded("a", 5, 0); code(err) != CodeTransactionTooOld {
		t.Fatalf("txnNumber 5 after 6: %v, want 225", err)
	}

	// The turn: a second command of the session waits for the first.
	tx, err := f.r.BeginTxn(context.Background(), []byte("a"), 6)
	if err != nil {
		t.Fatal(err)
	}
	// (From other goroutines: one goroutine holds one session turn.)
	waited := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := f.r.BeginTxn(ctx, []byte("a"), 6)
		waited <- err
	}()
	if err := <-waited; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second command of a busy session: %v, want it to wait until its context ends", err)
	}
	got := make(chan error, 1)
	go func() {
		tx2, err := f.r.BeginTxn(context.Background(), []byte("a"), 6)
		if err == nil {
			tx2.End()
		}
		got <- err
	}()
	tx.End()
	if err := <-got; err != nil {
		t.Fatal(err)
	}

	// Durable: after reopening, the same answers.
	f.reopen(0)
	if v, err := f.recorded("a", 6, 0); err != nil || string(v) != "r6" {
		t.Fatalf("after reopen (a, 6, 0) = %q, %v", v, err)
	}
	if _, err := f.recorded("a", 5, 0); code(err) != CodeTransactionTooOld {
		t.Fatalf("after reopen txnNumber 5: %v, want 225", err)
	}
}

func TestRetryRecordsExpire(t *testing.T) {
	f := newRetryFixture(t, 0)
	f.record("old", 1, []byte("x"), 0)
	f.now.Add(int64(10 * time.Minute))
	f.record("mid", 1, []byte("y"), 0)
	f.now.Add(int64(DefaultSessionTTL - 5*time.Minute)) // "old" is 35 minutes old, "mid" 25
	f.record("new", 1, []byte("z"), 0)
	if v, _ := f.recorded("old", 1, 0); v != nil {
		t.Fatalf("a session idle past the timeout kept its records: %q", v)
	}
	if v, _ := f.recorded("mid", 1, 0); string(v) != "y" {
		t.Fatalf("a session within the timeout lost its records: %q", v)
	}
	n := 0
	if err := f.log.ForEachRecord([]byte{recPrefix}, func(k, v []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 4 { // two sessions: a header and one statement each
		t.Fatalf("%d records in the log, want 4", n)
	}
}

func TestRetryRecordsBound(t *testing.T) {
	big := make([]byte, 1000)
	// Room for two sessions' results, not three.
	max := int64(2*(headerBytes+stmtBytes+len(big)) + headerBytes + 10)
	f := newRetryFixture(t, max)
	f.record("a", 1, big, 0)
	f.now.Add(int64(time.Second))
	f.record("b", 1, big, 0)
	f.now.Add(int64(time.Second))
	f.record("c", 1, big, 0)
	// a's results went early; its header says so, and a retry of it is
	// refused rather than run again.
	if _, err := f.recorded("a", 1, 0); code(err) != CodeIncompleteTransactionHistory {
		t.Fatalf("retry of a session whose results were dropped: %v, want 217", err)
	}
	if v, _ := f.recorded("c", 1, 0); len(v) != len(big) {
		t.Fatal("the newest session lost its results")
	}
	f.reopen(max)
	if _, err := f.recorded("a", 1, 0); code(err) != CodeIncompleteTransactionHistory {
		t.Fatalf("after reopen: %v, want 217", err)
	}
	if f.r.retry.bytes > max {
		t.Fatalf("records take %d bytes, bound %d", f.r.retry.bytes, max)
	}
}
