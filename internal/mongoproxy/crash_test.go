package mongoproxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/oplog"
)

// TestCrash kills the proxy process with SIGKILL right after an op reached
// the log (before it was applied), and right after it was applied (before it
// was marked applied), restarts it on the same op log and database, and
// checks that the op is applied exactly once, over each upstream kind.
func TestCrash(t *testing.T) {
	for _, k := range upstreamKinds {
		t.Run(string(k), func(t *testing.T) { testCrash(t, k) })
	}
}

func testCrash(t *testing.T, k upstreamKind) {
	for _, tc := range []struct {
		point    string
		nAtCrash int32 // n in the database right after the kill
	}{{"after-append", 0}, {"after-apply", 1}} {
		t.Run(tc.point, func(t *testing.T) {
			up := upstreamOf(t, k, 0)
			dir := t.TempDir()
			db := freshDB("crash")
			const node = "crashy"
			direct := connect(t, up)
			defer func() { _ = direct.Disconnect(testCtx) }()
			dc := direct.Database(db).Collection("c")

			// The second op appended (or applied) kills the process.
			ch := startChild(t, up, dir, node, tc.point+":2")
			cl, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + ch.addr + "/").SetRetryWrites(false).SetTimeout(20 * time.Second))
			if err != nil {
				t.Fatal(err)
			}
			c := cl.Database(db).Collection("c")
			if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "n", Value: int32(0)}}); err != nil {
				t.Fatal(err)
			}
			_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}})
			if err == nil {
				t.Fatal("the update was acknowledged although the proxy was killed")
			}
			_ = cl.Disconnect(context.Background())
			werr := ch.wait()
			var ee *exec.ExitError
			if !errors.As(werr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child did not die by SIGKILL: %v", werr)
			}
			raw, err := dc.FindOne(testCtx, bson.D{{Key: "_id", Value: 1}}).Raw()
			if err != nil {
				t.Fatal(err)
			}
			if n := raw.Lookup("n").Int32(); n != tc.nAtCrash {
				t.Fatalf("after the kill n = %d, want %d", n, tc.nAtCrash)
			}

			// Restart: the unapplied op is re-applied before the proxy listens.
			ch2 := startChild(t, up, dir, node, "")
			cl2 := connect(t, "mongodb://"+ch2.addr+"/")
			c2 := cl2.Database(db).Collection("c")
			m := findOne(t, c2, bson.D{{Key: "_id", Value: 1}})
			if m["n"] != int32(1) {
				t.Fatalf("after restart n = %v, want exactly 1", m["n"])
			}
			if _, err := c2.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}}); err != nil {
				t.Fatal(err)
			}
			if m := findOne(t, c2, bson.D{{Key: "_id", Value: 1}}); m["n"] != int32(2) {
				t.Fatalf("after another $inc n = %v, want 2", m["n"])
			}
			_ = cl2.Disconnect(context.Background())
			ch2.stop()

			// The log holds the three ops once each, all applied.
			l, err := oplog.Open(oplog.Options{Path: filepath.Join(dir, "oplog.db"), Origin: node}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if got := l.LastSeq(node); got != 3 {
				t.Fatalf("log has %d local ops, want 3", got)
			}
			if un, err := l.Unapplied(); err != nil || len(un) != 0 {
				t.Fatalf("unapplied after clean shutdown: %d %v", len(un), err)
			}
		})
	}
}
