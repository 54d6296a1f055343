package oplog

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	bolt "go.etcd.io/bbolt"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

func open(t testing.TB, path, origin string) *Log {
	t.Helper()
	l, err := Open(Options{Path: path, Origin: origin}, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// mkOp makes a valid update op from clock c; the payload carries n so it can be checked later.
func mkOp(t testing.TB, c *crdt.Clock, n int) *crdt.Op {
	u, err := bson.Marshal(bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: int64(n)}}}})
	if err != nil {
		t.Fatal(err)
	}
	id, v, _ := bson.MarshalValue(int32(n % 17))
	return &crdt.Op{TS: c.Now(), NS: "db.c", ID: bson.RawValue{Type: id, Value: v}, Kind: crdt.Update, Update: u}
}

func payload(t testing.TB, op *crdt.Op) int64 {
	t.Helper()
	n, ok := op.Update.Lookup("$set", "n").Int64OK()
	if !ok {
		t.Fatalf("op %d: bad payload %v", op.Seq, op.Update)
	}
	return n
}

func scanAll(t testing.TB, l *Log, origin string, after uint64) []*crdt.Op {
	t.Helper()
	var out []*crdt.Op
	if err := l.Scan(origin, after, func(op *crdt.Op) error { out = append(out, op); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestConcurrentAppendsContiguousAndDurable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	reg := prometheus.NewRegistry()
	l, err := Open(Options{Path: path, Origin: "n1"}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	c := crdt.NewClock("n1", nil)
	const workers, perWorker = 32, 40
	var mu sync.Mutex
	bySeq := map[uint64]int64{} // seq -> payload, from the ops AppendLocal filled in
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range perWorker {
				ops := make([]*crdt.Op, 1+next.Load()%3)
				for i := range ops {
					ops[i] = mkOp(t, c, int(next.Add(1)))
				}
				if err := l.AppendLocal(context.Background(), ops); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, op := range ops {
					if op.Origin != "n1" || op.Seq == 0 {
						t.Errorf("op not stamped: %q %d", op.Origin, op.Seq)
					}
					if _, dup := bySeq[op.Seq]; dup {
						t.Errorf("seq %d assigned twice", op.Seq)
					}
					bySeq[op.Seq] = payload(t, op)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	n := uint64(len(bySeq))
	for s := uint64(1); s <= n; s++ {
		if _, ok := bySeq[s]; !ok {
			t.Fatalf("seqs not contiguous: %d missing of %d", s, n)
		}
	}
	if l.LastSeq("n1") != n || l.Entries() != int64(n) {
		t.Fatalf("LastSeq %d, Entries %d, want %d", l.LastSeq("n1"), l.Entries(), n)
	}
	if got := counterValue(t, l.m.appends.WithLabelValues("local")); got != float64(n) {
		t.Fatalf("appends metric %v", got)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) < 6 {
		t.Fatalf("%d metric families registered (%v)", len(mfs), err)
	}
	maxTS := l.MaxTimestamp()
	if maxTS != c.Last() {
		t.Fatalf("MaxTimestamp %v, clock last %v", maxTS, c.Last())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = open(t, path, "n1")
	defer l.Close()
	ops := scanAll(t, l, "n1", 0)
	if uint64(len(ops)) != n {
		t.Fatalf("after reopen: %d ops, want %d", len(ops), n)
	}
	for i, op := range ops {
		if op.Seq != uint64(i+1) || payload(t, op) != bySeq[op.Seq] || op.Origin != "n1" {
			t.Fatalf("after reopen: op %d is seq %d payload %d origin %q", i, op.Seq, payload(t, op), op.Origin)
		}
	}
	if l.MaxTimestamp() != maxTS || l.LastSeq("n1") != n || l.Entries() != int64(n) {
		t.Fatalf("after reopen: MaxTimestamp %v LastSeq %d Entries %d", l.MaxTimestamp(), l.LastSeq("n1"), l.Entries())
	}
}

func TestUnappliedAndWatermark(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	l := open(t, path, "n1")
	c := crdt.NewClock("n1", nil)
	var ops []*crdt.Op
	for i := range 10 {
		ops = append(ops, mkOp(t, c, i))
	}
	if err := l.AppendLocal(context.Background(), ops); err != nil {
		t.Fatal(err)
	}
	// Out of order: 1, 2, 5, 3 → watermark 3, then 4 closes the gap up to 5.
	for _, i := range []int{0, 1, 4, 2} {
		if err := l.MarkApplied(ops[i]); err != nil {
			t.Fatal(err)
		}
	}
	if w := l.Applied("n1"); w != 3 {
		t.Fatalf("watermark %d, want 3", w)
	}
	un, err := l.Unapplied()
	if err != nil || len(un) != 7 || un[0].Seq != 4 {
		t.Fatalf("Unapplied: %d ops, first %v, err %v", len(un), un, err)
	}
	l.MarkApplied(ops[3])
	if w := l.Applied("n1"); w != 5 {
		t.Fatalf("watermark %d, want 5", w)
	}
	l.Close()
	// Close persisted the watermark.
	l = open(t, path, "n1")
	defer l.Close()
	un, err = l.Unapplied()
	if err != nil || len(un) != 5 || un[0].Seq != 6 || un[4].Seq != 10 {
		t.Fatalf("after reopen, Unapplied: %d ops, err %v", len(un), err)
	}
	if err := l.MarkApplied(&crdt.Op{}); err == nil {
		t.Fatal("MarkApplied accepted an op without origin")
	}
}

func TestWatermarkFlushedLazily(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	l, err := Open(Options{Path: path, Origin: "n1", FlushInterval: 10 * time.Millisecond}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := crdt.NewClock("n1", nil)
	op := mkOp(t, c, 1)
	if err := l.AppendLocal(context.Background(), []*crdt.Op{op}); err != nil {
		t.Fatal(err)
	}
	l.MarkApplied(op)
	// The flush tick persists it without any further append or Close.
	for {
		l.mu.Lock()
		dirty := l.dirty
		l.mu.Unlock()
		if !dirty {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	var w uint64
	l.db.View(func(tx *bolt.Tx) error { w = readApplied(tx, "n1"); return nil })
	if w != 1 {
		t.Fatalf("persisted watermark %d", w)
	}
}

func TestRemoteAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	l := open(t, path, "n1")
	defer l.Close()
	pc := crdt.NewClock("peer", nil)
	var ops []*crdt.Op
	for i := range 5 {
		op := mkOp(t, pc, i)
		op.Origin, op.Seq = "peer", uint64(i+1)
		ops = append(ops, op)
	}
	ctx := context.Background()
	if err := l.AppendRemote(ctx, ops[2:]); err != nil {
		t.Fatal(err)
	}
	if err := l.AppendRemote(ctx, ops); err != nil { // 3..5 again: ignored
		t.Fatal(err)
	}
	if l.Entries() != 5 || l.LastSeq("peer") != 5 || l.LastSeq("n1") != 0 {
		t.Fatalf("entries %d last %d", l.Entries(), l.LastSeq("peer"))
	}
	if got := counterValue(t, l.m.appends.WithLabelValues("remote")); got != 5 {
		t.Fatalf("remote appends metric %v, want 5 (duplicates excluded)", got)
	}
	l.MarkApplied(ops...)
	if n, err := l.Trim(); err != nil || n != 5 {
		t.Fatalf("Trim removed %d, %v", n, err)
	}
	// Applied and trimmed: a late duplicate is not stored again.
	if err := l.AppendRemote(ctx, ops[:1]); err != nil || l.Entries() != 0 {
		t.Fatalf("late duplicate: entries %d, %v", l.Entries(), err)
	}
	bad := mkOp(t, pc, 9)
	if err := l.AppendRemote(ctx, []*crdt.Op{bad}); err == nil {
		t.Fatal("accepted a remote op without origin/seq")
	}
	// The local clock resumes above peers' timestamps too.
	if l.MaxTimestamp() != ops[4].TS {
		t.Fatalf("MaxTimestamp %v", l.MaxTimestamp())
	}
}

func TestTrim(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	l := open(t, path, "n1")
	c := crdt.NewClock("n1", nil)
	var ops []*crdt.Op
	for i := range 10 {
		ops = append(ops, mkOp(t, c, i))
	}
	ctx := context.Background()
	if err := l.AppendLocal(ctx, ops); err != nil {
		t.Fatal(err)
	}
	l.MarkApplied(ops[:8]...)
	l.SetPeerAck("a", 5)
	l.SetPeerAck("b", 7)
	l.SetPeerAck("a", 3) // never moves back
	if acks := l.PeerAcks(); acks["a"] != 5 || acks["b"] != 7 {
		t.Fatalf("acks %v", acks)
	}
	if n, err := l.Trim(); err != nil || n != 5 {
		t.Fatalf("Trim removed %d (%v), want 5", n, err)
	}
	if got := scanAll(t, l, "n1", 0); len(got) != 5 || got[0].Seq != 6 || l.FirstSeq("n1") != 6 {
		t.Fatalf("after Trim: %d ops, FirstSeq %d", len(got), l.FirstSeq("n1"))
	}
	if err := l.RemovePeer("a"); err != nil {
		t.Fatal(err)
	}
	if n, _ := l.Trim(); n != 2 {
		t.Fatalf("after removing peer a, Trim removed %d, want 2 (up to b's 7)", n)
	}
	l.SetPeerAck("b", 10)
	l.MarkApplied(ops...)
	if n, _ := l.Trim(); n != 3 || l.Entries() != 0 {
		t.Fatalf("Trim removed %d, entries %d", n, l.Entries())
	}
	l.Close()
	// Everything trimmed: seqs still continue after a restart, and acks survived.
	l = open(t, path, "n1")
	defer l.Close()
	if acks := l.PeerAcks(); acks["b"] != 10 || len(acks) != 1 {
		t.Fatalf("acks after reopen %v", acks)
	}
	op := mkOp(t, c, 11)
	if err := l.AppendLocal(ctx, []*crdt.Op{op}); err != nil || op.Seq != 11 {
		t.Fatalf("seq after trim and reopen: %d (%v)", op.Seq, err)
	}
}

func TestScan(t *testing.T) {
	l := open(t, filepath.Join(t.TempDir(), "log.db"), "n1")
	defer l.Close()
	c := crdt.NewClock("n1", nil)
	var ops []*crdt.Op
	for i := range 3*scanChunk + 7 {
		ops = append(ops, mkOp(t, c, i))
	}
	ctx := context.Background()
	if err := l.AppendLocal(ctx, ops); err != nil {
		t.Fatal(err)
	}
	pc := crdt.NewClock("p", nil)
	p := mkOp(t, pc, 1)
	p.Origin, p.Seq = "p", 1
	l.AppendRemote(ctx, []*crdt.Op{p})
	got := scanAll(t, l, "n1", 100)
	if len(got) != len(ops)-100 {
		t.Fatalf("Scan after 100: %d ops", len(got))
	}
	for i, op := range got {
		if op.Seq != uint64(101+i) || payload(t, op) != int64(100+i) {
			t.Fatalf("Scan order: position %d has seq %d", i, op.Seq)
		}
	}
	if got := scanAll(t, l, "p", 0); len(got) != 1 || got[0].Origin != "p" {
		t.Fatalf("Scan p: %v", got)
	}
	if got := scanAll(t, l, "nobody", 0); len(got) != 0 {
		t.Fatal("Scan of an unknown origin returned ops")
	}
	stop := errors.New("stop")
	n := 0
	if err := l.Scan("n1", 0, func(*crdt.Op) error {
		n++
		if n == 5 {
			return stop
		}
		return nil
	}); !errors.Is(err, stop) || n != 5 {
		t.Fatalf("Scan did not stop: %v after %d", err, n)
	}
	// Scan while appends continue: the consumer never blocks commits.
	done := make(chan struct{})
	go func() {
		defer close(done)
		appended := 0
		l.Scan("n1", 0, func(*crdt.Op) error {
			if appended == 2*scanChunk {
				return nil
			}
			appended++
			return l.AppendLocal(ctx, []*crdt.Op{mkOp(t, c, 0)})
		})
	}()
	<-done
}

func TestContextAndClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	l := open(t, path, "n1")
	c := crdt.NewClock("n1", nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.AppendLocal(ctx, []*crdt.Op{mkOp(t, c, 1)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled append: %v", err)
	}
	if l.Entries() != 0 || l.LastSeq("n1") != 0 {
		t.Fatal("a cancelled append was written")
	}
	// Appenders racing Close: each append either succeeded (and is durable) or got ErrClosed.
	var mu sync.Mutex
	var ok []*crdt.Op
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				op := mkOp(t, c, i)
				err := l.AppendLocal(context.Background(), []*crdt.Op{op})
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				ok = append(ok, op)
				mu.Unlock()
			}
		})
	}
	for l.Entries() < 200 {
		time.Sleep(time.Millisecond)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := l.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if err := l.MarkApplied(ok[0]); !errors.Is(err, ErrClosed) {
		t.Fatalf("MarkApplied after Close: %v", err)
	}
	l = open(t, path, "n1")
	defer l.Close()
	got := scanAll(t, l, "n1", 0)
	if len(got) != len(ok) {
		t.Fatalf("%d appends succeeded, %d in the log", len(ok), len(got))
	}
}

func TestSecondOpenTimesOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.db")
	l := open(t, path, "n1")
	defer l.Close()
	if _, err := Open(Options{Path: path, Origin: "n1", LockTimeout: 50 * time.Millisecond}, nil, nil); err == nil {
		t.Fatal("a second Open of a locked log succeeded")
	}
	if _, err := Open(Options{Path: path}, nil, nil); err == nil {
		t.Fatal("Open without an origin succeeded")
	}
}

// TestCrashDuringAppends kill -9s a child process (this test binary, re-executed) in the middle of
// concurrent appends and checks that the log reopens contiguous and holds every op whose
// AppendLocal had returned (the child prints each seq after its append returns).
func TestCrashDuringAppends(t *testing.T) {
	if os.Getenv("OPLOG_CRASH_CHILD") != "" {
		return // the child runs from TestMain
	}
	for round := range 3 {
		path := filepath.Join(t.TempDir(), "log.db")
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "OPLOG_CRASH_CHILD="+path)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked := map[uint64]int64{}
		sc := bufio.NewScanner(out)
		killAt := 300 + round*400
		for sc.Scan() {
			seq, n, ok := strings.Cut(sc.Text(), " ")
			if !ok {
				continue
			}
			s, _ := strconv.ParseUint(seq, 10, 64)
			v, _ := strconv.ParseInt(n, 10, 64)
			acked[s] = v
			if len(acked) == killAt {
				cmd.Process.Signal(syscall.SIGKILL)
				break
			}
		}
		go func() {
			for sc.Scan() {
			}
		}() // drain whatever was in flight
		cmd.Wait()
		if len(acked) < killAt {
			t.Fatalf("child ended after %d acknowledged appends", len(acked))
		}

		l := open(t, path, "n1")
		ops := scanAll(t, l, "n1", 0)
		for i, op := range ops {
			if op.Seq != uint64(i+1) {
				t.Fatalf("round %d: log not contiguous: position %d holds seq %d", round, i, op.Seq)
			}
			if err := op.Validate(); err != nil {
				t.Fatalf("round %d: seq %d: %v", round, op.Seq, err)
			}
		}
		for s, v := range acked {
			if s > uint64(len(ops)) || payload(t, ops[s-1]) != v {
				t.Fatalf("round %d: acknowledged seq %d (payload %d) lost; log has %d ops", round, s, v, len(ops))
			}
		}
		if l.LastSeq("n1") != uint64(len(ops)) {
			t.Fatalf("LastSeq %d, %d ops", l.LastSeq("n1"), len(ops))
		}
		t.Logf("round %d: killed after %d acknowledged appends; log holds %d", round, len(acked), len(ops))
		l.Close()
	}
}

func TestMain(m *testing.M) {
	if path := os.Getenv("OPLOG_CRASH_CHILD"); path != "" {
		crashChild(path)
		return
	}
	os.Exit(m.Run())
}

// crashChild appends forever from 8 goroutines, printing "seq payload" after each append returns,
// until it is killed.
func crashChild(path string) {
	l, err := Open(Options{Path: path, Origin: "n1"}, nil, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	c := crdt.NewClock("n1", nil)
	var mu sync.Mutex
	var n atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				ops := []*crdt.Op{mkOp(nil, c, int(n.Add(1))), mkOp(nil, c, int(n.Add(1)))}
				if err := l.AppendLocal(context.Background(), ops); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(3)
				}
				mu.Lock()
				for _, op := range ops {
					v, _ := op.Update.Lookup("$set", "n").Int64OK()
					fmt.Printf("%d %d\n", op.Seq, v)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func readApplied(tx *bolt.Tx, origin string) uint64 {
	v := tx.Bucket(bucketMeta).Bucket(bucketApplied).Get([]byte(origin))
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// TestTrimKeepsRetainedOps: TrimBelow keeps each origin's ops above its
// bound, a peer's applied ops as well as this node's own (relays serve
// them from here), and trims them once the bound moves past.
func TestTrimKeepsRetainedOps(t *testing.T) {
	l := open(t, filepath.Join(t.TempDir(), "log.db"), "n1")
	defer l.Close()
	c := crdt.NewClock("p", nil)
	var ops []*crdt.Op
	for i := range 10 {
		op := mkOp(t, c, i)
		op.Origin, op.Seq = "p", uint64(i+1)
		ops = append(ops, op)
	}
	ctx := context.Background()
	if err := l.AppendRemote(ctx, ops); err != nil {
		t.Fatal(err)
	}
	l.MarkApplied(ops...)
	if n, err := l.TrimBelow(map[string]uint64{"p": 4}); err != nil || n != 4 {
		t.Fatalf("TrimBelow(p: 4) removed %d (%v), want 4", n, err)
	}
	raws, err := l.ReadRaw("p", 4, 100, 1<<20)
	if err != nil || len(raws) != 6 {
		t.Fatalf("read %d of p's ops after 4 (%v), want 6", len(raws), err)
	}
	if n, err := l.TrimBelow(map[string]uint64{"p": 0}); err != nil || n != 0 {
		t.Fatalf("TrimBelow(p: 0) removed %d (%v), want 0", n, err)
	}
	if n, err := l.TrimBelow(nil); err != nil || n != 6 {
		t.Fatalf("TrimBelow(nil) removed %d (%v), want 6", n, err)
	}
}
