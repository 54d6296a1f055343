package oplog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of the current format from the current code")

// goldenOps is one op of every kind, as a node stores them. Their stored
// bytes at format Format are in testdata/format<Format>/.
func goldenOps(t *testing.T) map[string]*crdt.Op {
	t.Helper()
	must := func(b []byte, err error) bson.Raw {
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	id := func(v any) bson.RawValue {
		typ, b, err := bson.MarshalValue(v)
		if err != nil {
			t.Fatal(err)
		}
		return bson.RawValue{Type: typ, Value: b}
	}
	ts := func(n int64) crdt.Timestamp {
		return crdt.Timestamp{Wall: 1_767_225_600_000 + n, Logical: uint32(n), Node: "n1~a"}
	}
	return map[string]*crdt.Op{
		"insert": {Origin: "n1~a", Seq: 1, TS: ts(1), NS: "app.docs", ID: id("doc-1"), Kind: crdt.Insert,
			Doc: must(bson.Marshal(bson.D{{Key: "_id", Value: "doc-1"}, {Key: "n", Value: int32(1)}, {Key: "tags", Value: bson.A{"a", "b"}}, {Key: "sub", Value: bson.D{{Key: "x", Value: 1.5}}}}))},
		"update": {Origin: "n1~a", Seq: 2, TS: ts(2), NS: "app.docs", ID: id("doc-1"), Kind: crdt.Update,
			Update: must(bson.Marshal(bson.D{{Key: "$set", Value: bson.D{{Key: "sub.x", Value: 2.5}}}, {Key: "$inc", Value: bson.D{{Key: "n", Value: int64(3)}}}, {Key: "$unset", Value: bson.D{{Key: "tags", Value: ""}}}}))},
		"delete": {Origin: "n1~a", Seq: 3, TS: ts(3), NS: "app.docs", ID: id(int32(7)), Kind: crdt.Delete},
		"ddl": {Origin: "n1~a", Seq: 4, TS: ts(4), NS: "app.docs", ID: id(crdt.DDLKey("by_n")), Kind: crdt.DDL,
			Doc: must(bson.Marshal(bson.D{{Key: "createIndexes", Value: "docs"}, {Key: "indexes", Value: bson.A{bson.D{{Key: "key", Value: bson.D{{Key: "n", Value: int32(1)}}}, {Key: "name", Value: "by_n"}}}}}))},
	}
}

// The ops a node stores are byte for byte those of the golden files of the
// current format, and the golden files of every format this binary reads
// decode to the same ops. A change to the stored encoding fails here: it
// needs a new Format (and a reader of the old one), not an edit of the
// golden files.
func TestStoredOpsGolden(t *testing.T) {
	ops := goldenOps(t)
	path := filepath.Join(t.TempDir(), "oplog.db")
	l := open(t, path, "n2")
	for _, name := range []string{"insert", "update", "delete", "ddl"} {
		if err := l.AppendRemote(t.Context(), []*crdt.Op{ops[name]}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	stored := map[string][]byte{}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOps).Bucket([]byte("n1~a"))
		for name, op := range ops {
			stored[name] = bytes.Clone(b.Get(binary.BigEndian.AppendUint64(nil, op.Seq)))
		}
		if f := tx.Bucket(bucketMeta).Get(keyFormat); len(f) != 8 || binary.BigEndian.Uint64(f) != Format {
			t.Errorf("format record %x, want %d", f, Format)
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	cur := filepath.Join("testdata", fmt.Sprintf("format%d", Format))
	if *updateGolden {
		if err := os.MkdirAll(cur, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range stored {
			if err := os.WriteFile(filepath.Join(cur, name+".bson"), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, b := range stored {
		want, err := os.ReadFile(filepath.Join(cur, name+".bson"))
		if err != nil {
			t.Fatalf("%v (run with -update once when adding a format)", err)
		}
		if !bytes.Equal(b, want) {
			t.Errorf("%s: stored as\n%x\nthe golden file of format %d has\n%x", name, b, Format, want)
		}
	}
	for f := MinFormat; f <= Format; f++ {
		for name, op := range ops {
			b, err := os.ReadFile(filepath.Join("testdata", fmt.Sprintf("format%d", f), name+".bson"))
			if err != nil {
				t.Fatal(err)
			}
			var got crdt.Op
			if err := got.UnmarshalBSON(b); err != nil {
				t.Fatalf("format %d %s: %v", f, name, err)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("format %d %s: %v", f, name, err)
			}
			again, _ := got.MarshalBSON()
			orig, _ := op.MarshalBSON()
			if !bytes.Equal(again, orig) || got.Origin != op.Origin || got.Seq != op.Seq || got.TS != op.TS || got.Kind != op.Kind {
				t.Errorf("format %d %s decodes to %+v, want %+v", f, name, got, op)
			}
		}
	}
}

func setFormat(t *testing.T, path string, v []byte) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		if v == nil {
			return tx.Bucket(bucketMeta).Delete(keyFormat)
		}
		return tx.Bucket(bucketMeta).Put(keyFormat, v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A file without a format record (as every release before formats were
// recorded wrote them) is format 1: it opens, keeps its ops, and gets the
// record. A file of a newer format, or of one too old, is refused with an
// error that says so and what to do, and is left as it was.
func TestFormatRecordAndRefusal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "oplog.db")
	l := open(t, path, "n1")
	c := crdt.NewClock("n1", time.Now)
	if err := l.AppendLocal(t.Context(), []*crdt.Op{mkOp(t, c, 1)}); err != nil {
		t.Fatal(err)
	}
	l.Close()

	setFormat(t, path, nil)
	l = open(t, path, "n1")
	if got := scanAll(t, l, "n1", 0); len(got) != 1 {
		t.Fatalf("a file without a format record lost its ops: %d", len(got))
	}
	l.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		if f := tx.Bucket(bucketMeta).Get(keyFormat); len(f) != 8 || binary.BigEndian.Uint64(f) != Format {
			t.Errorf("format record %x after opening, want %d", f, Format)
		}
		return nil
	})
	db.Close()

	for _, tc := range []struct {
		name string
		v    []byte
		want string
	}{
		{"newer", binary.BigEndian.AppendUint64(nil, Format+1), "written by a newer release"},
		{"older", binary.BigEndian.AppendUint64(nil, MinFormat-1), "upgrade one release at a time"},
		{"garbage", []byte{1}, "bad format record"},
	} {
		setFormat(t, path, tc.v)
		_, err := Open(Options{Path: path, Origin: "n1"}, nil, prometheus.NewRegistry())
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s format: %v", tc.name, err)
		}
	}
	setFormat(t, path, binary.BigEndian.AppendUint64(nil, Format))
	l = open(t, path, "n1")
	if got := scanAll(t, l, "n1", 0); len(got) != 1 {
		t.Errorf("ops after refused opens: %d", len(got))
	}
	l.Close()
}
