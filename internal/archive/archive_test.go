package archive

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// testOps makes n ops of origin o as an app writes them: inserts of
// comment-like documents (about 200 bytes) and $set/$inc updates of them,
// at 1,000 writes a second.
func testOps(t testing.TB, origin string, first uint64, n int) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	var out [][]byte
	for i := range n {
		seq := first + uint64(i)
		op := &crdt.Op{Origin: origin, Seq: seq, TS: crdt.Timestamp{Wall: 1_700_000_000_000 + int64(seq), Node: origin}, NS: "app.comments"}
		if i%2 == 0 {
			id := fmt.Sprintf("c%07d", seq)
			op.Kind = crdt.Insert
			op.ID = bson.RawValue{Type: bson.TypeString, Value: mustValue(id)}
			// Text of random words: compresses about as well as prose.
			words := make([]string, 12+rng.IntN(12))
			for w := range words {
				b := make([]byte, 2+rng.IntN(7))
				for k := range b {
					b[k] = byte('a' + rng.IntN(26))
				}
				words[w] = string(b)
			}
			op.Doc, _ = bson.Marshal(bson.D{{Key: "_id", Value: id}, {Key: "thread", Value: fmt.Sprintf("t%04d", rng.IntN(1000))},
				{Key: "author", Value: fmt.Sprintf("user-%d", rng.IntN(10000))}, {Key: "text", Value: strings.Join(words, " ")}, {Key: "likes", Value: int32(0)}})
		} else {
			op.ID = bson.RawValue{Type: bson.TypeString, Value: mustValue(fmt.Sprintf("c%07d", rng.IntN(int(seq))+1))}
			op.Kind = crdt.Update
			op.Update, _ = bson.Marshal(bson.D{{Key: "$inc", Value: bson.D{{Key: "likes", Value: int32(1)}}}, {Key: "$set", Value: bson.D{{Key: "seen", Value: int64(seq)}}}})
		}
		b, err := bson.Marshal(op)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func mustValue(s string) []byte { _, v, _ := bson.MarshalValue(s); return v }

// TestSegmentRoundTripAndDamage: a segment's name tells its ops and
// times; read back it gives the same ops; cut short anywhere, with a byte
// changed, or renamed to claim other ops, it is refused with its name.
func TestSegmentRoundTripAndDamage(t *testing.T) {
	ctx := context.Background()
	st := &backup.DirStore{Root: t.TempDir()}
	ops := testOps(t, "n1~a", 11, 300)
	s, data, err := encodeSegment("n1~a", ops)
	if err != nil {
		t.Fatal(err)
	}
	if s.First != 11 || s.Last != 310 {
		t.Fatalf("segment %+v", s)
	}
	if err := st.Put(ctx, s.Name(), data); err != nil {
		t.Fatal(err)
	}
	segs, err := listSegments(ctx, st, "")
	if err != nil || len(segs["n1~a"]) != 1 || segs["n1~a"][0] != s {
		t.Fatalf("listing: %v %v", segs, err)
	}
	got, err := readSegment(ctx, st, s)
	if err != nil || len(got) != 300 || got[299].Seq != 310 {
		t.Fatalf("read back: %d ops, %v", len(got), err)
	}
	flipped := bytes.Clone(data)
	flipped[len(flipped)/2] ^= 1
	other := s
	other.Last = 311
	for _, bad := range []struct {
		what string
		seg  Segment
		data []byte
		want string
	}{
		{"cut short", s, data[:len(data)-7], "checksum mismatch"},
		{"cut in half", s, data[:len(data)/2], "checksum mismatch"},
		{"a byte changed", s, flipped, "checksum mismatch"},
		{"named for an op it lacks", other, data, "holds 300 ops, its name says 301"},
	} {
		if bad.seg != s {
			bad.seg.SHA256 = s.SHA256
		}
		_, err := decodeSegment(bad.seg, bad.data)
		var se *SegmentError
		if !errors.As(err, &se) || se.Name != bad.seg.Name() || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want a *SegmentError naming %s and %q", bad.what, err, bad.seg.Name(), bad.want)
		}
	}
}

// BenchmarkArchiveBytesPerOp measures what the archive stores per op
// (compressed segment bytes) for comment-like writes: half inserts of
// ~200-byte documents, half $inc+$set updates, in 16 MiB segments. The
// README's cost estimate per million writes comes from it.
func BenchmarkArchiveBytesPerOp(b *testing.B) {
	ops := testOps(b, "fra-1~k3j9x2", 1, 100_000)
	raw := 0
	for _, o := range ops {
		raw += len(o)
	}
	b.ResetTimer()
	var stored int
	for range b.N {
		stored = 0
		for rest := ops; len(rest) > 0; {
			n, size := 0, 0
			for n < len(rest) && size < 16<<20 {
				size += len(rest[n])
				n++
			}
			_, data, err := encodeSegment("fra-1~k3j9x2", rest[:n])
			if err != nil {
				b.Fatal(err)
			}
			stored += len(data)
			rest = rest[n:]
		}
	}
	b.ReportMetric(float64(raw)/float64(len(ops)), "raw-B/op")
	b.ReportMetric(float64(stored)/float64(len(ops)), "stored-B/op")
	b.ReportMetric(float64(stored)/float64(len(ops))*1e6/(1<<20), "MiB/million-ops")
}
