package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

// memSource stands in for a replica's read side in the tests of the
// stream's framing (the real replica is read in cmd/edgenode's
// TestBackupRestoreRejoinsWithDelta).
type memSource struct {
	items []replica.SnapshotItem
	fail  error // returned by Snapshot after the items
}

func (s *memSource) Origin() string                               { return "n1~a" }
func (s *memSource) AppliedVector() map[string]uint64             { return map[string]uint64{"n1~a": 7, "n2~b": 3} }
func (s *memSource) Frontier() crdt.Timestamp                     { return crdt.Timestamp{Wall: 1000, Node: "n1~a"} }
func (s *memSource) SyncedOrigin(context.Context) (string, error) { return "n1~a", nil }
func (s *memSource) Snapshot(_ context.Context, emit func(replica.SnapshotItem) error) error {
	for _, it := range s.items {
		if err := emit(it); err != nil {
			return err
		}
	}
	return s.fail
}

func testItems(n int) []replica.SnapshotItem {
	items := []replica.SnapshotItem{{Kind: replica.SnapCollection, NS: "app.docs", Doc: bson.Raw{5, 0, 0, 0, 0}}}
	for i := range n {
		doc, _ := bson.Marshal(bson.D{{Key: "_id", Value: fmt.Sprint(i)}, {Key: "pad", Value: strings.Repeat("p", 100)}})
		items = append(items, replica.SnapshotItem{Kind: replica.SnapDoc, NS: "app.docs", Doc: doc})
	}
	return items
}

// TestStreamRoundTrip: a stream taken whole is stored, found, verified and
// read back item for item.
func TestStreamRoundTrip(t *testing.T) {
	ctx := context.Background()
	src := &memSource{items: testItems(500)}
	var buf bytes.Buffer
	if _, err := Write(ctx, &buf, "n1", src); err != nil {
		t.Fatal(err)
	}
	st := &DirStore{Root: t.TempDir()}
	m, id, err := Take(ctx, &buf, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Counts.Documents != 500 || m.Counts.Collections != 1 || m.Vector["n2~b"] != 3 {
		t.Fatalf("manifest %+v", m)
	}
	fid, fm, err := Find(ctx, st)
	if err != nil || fid != id || fm.Checksum != m.Checksum {
		t.Fatalf("Find: %q %v, want %q", fid, err, id)
	}
	if err := Verify(ctx, st, id, fm); err != nil {
		t.Fatal(err)
	}
	var got []replica.SnapshotItem
	for _, p := range fm.Parts {
		if err := eachItem(ctx, st, id, p, func(it replica.SnapshotItem) error { got = append(got, it); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != len(src.items) {
		t.Fatalf("%d items back, want %d", len(got), len(src.items))
	}
	for i := range got {
		if got[i].Kind != src.items[i].Kind || got[i].NS != src.items[i].NS || !bytes.Equal(got[i].Doc, src.items[i].Doc) {
			t.Fatalf("item %d differs", i)
		}
	}
}

// TestStreamCutOrDamagedIsRefused: a stream cut anywhere, with a byte
// changed, or ended by the node's error record, leaves no manifest.
func TestStreamCutOrDamagedIsRefused(t *testing.T) {
	ctx := context.Background()
	var whole bytes.Buffer
	if _, err := Write(ctx, &whole, "n1", &memSource{items: testItems(50)}); err != nil {
		t.Fatal(err)
	}
	b := whole.Bytes()
	check := func(what string, stream []byte, want string) {
		t.Helper()
		st := &DirStore{Root: t.TempDir()}
		_, _, err := Take(ctx, bytes.NewReader(stream), st, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want one naming %q", what, err, want)
		}
		if ids, _ := st.Backups(ctx); len(ids) != 0 {
			t.Errorf("%s: a manifest was written", what)
		}
	}
	for _, cut := range []int{len(b) - 1, len(b) - 40, len(b) / 2} {
		check(fmt.Sprintf("cut at %d of %d", cut, len(b)), b[:cut], "cut before its end")
	}
	check("cut in the header", b[:30], "no header")
	flipped := bytes.Clone(b)
	flipped[len(b)/2] ^= 0x01 // inside a document's padding
	check("a byte changed", flipped, "checksum mismatch")

	var failed bytes.Buffer
	_, err := Write(ctx, &failed, "n1", &memSource{items: testItems(5), fail: errors.New("disk on fire")})
	if err == nil {
		t.Fatal("Write hid the snapshot's error")
	}
	check("the node failed", failed.Bytes(), "disk on fire")
}
