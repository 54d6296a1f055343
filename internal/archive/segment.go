package archive

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// Store is where the archive lives: a folder or an S3 prefix
// (backup.DirStore and backup.S3Store).
type Store interface {
	backup.Store
	// List returns the names under prefix, sorted.
	List(ctx context.Context, prefix string) ([]string, error)
	// Delete removes name.
	Delete(ctx context.Context, name string) error
}

// Open opens the archive at loc (a folder or s3://BUCKET/PREFIX).
func Open(ctx context.Context, loc string, o backup.S3Options) (Store, error) {
	st, err := backup.Open(ctx, loc, o)
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	as, ok := st.(Store)
	if !ok {
		return nil, fmt.Errorf("archive: %s cannot be listed", st)
	}
	return as, nil
}

const (
	segMagic = "EDGEAR1\n"
	// opsDir and baseDir are the archive's two halves.
	opsDir  = "ops/"
	baseDir = "base/"
	// baseMark is written into a base snapshot's folder after its
	// manifest: a base without it is not used (see BaseMark).
	baseMark = "pitr.json"
	// maxOp bounds one op record (an op is at most mongo.max_document_bytes).
	maxOp = 17 << 20
)

// Segment is one archived run of an origin's ops, as its name says:
//
//	ops/<origin>/<first seq>-<last seq>-<oldest wall ms>-<newest wall ms>-<sha256>.gz
//
// Seqs are zero-padded to 20 digits and wall times to 13, so names sort
// by seq and a listing alone tells which segments a restore needs (by seq
// and by time) without reading any of them. The SHA-256 is of the stored
// (compressed) bytes: a segment cut short or altered does not match its
// own name.
type Segment struct {
	Origin      string
	First, Last uint64
	MinWall     int64 // unix ms of the oldest op's clock
	MaxWall     int64
	SHA256      string
}

// Name is the segment's name in the store.
func (s Segment) Name() string {
	return fmt.Sprintf("%s%s/%020d-%020d-%013d-%013d-%s.gz", opsDir, s.Origin, s.First, s.Last, s.MinWall, s.MaxWall, s.SHA256)
}

var segName = regexp.MustCompile(`^([0-9]{20})-([0-9]{20})-([0-9]{13})-([0-9]{13})-([0-9a-f]{64})\.gz$`)

// parseSegment reads a segment's name ("" origin: not a segment).
func parseSegment(name string) (Segment, bool) {
	rest, ok := strings.CutPrefix(name, opsDir)
	if !ok {
		return Segment{}, false
	}
	origin, file, ok := strings.Cut(rest, "/")
	if !ok || origin == "" {
		return Segment{}, false
	}
	m := segName.FindStringSubmatch(file)
	if m == nil {
		return Segment{}, false
	}
	num := func(s string) uint64 { n, _ := strconv.ParseUint(s, 10, 64); return n }
	s := Segment{Origin: origin, First: num(m[1]), Last: num(m[2]), MinWall: int64(num(m[3])), MaxWall: int64(num(m[4])), SHA256: m[5]}
	if s.First == 0 || s.Last < s.First || s.MaxWall < s.MinWall {
		return Segment{}, false
	}
	return s, true
}

// encodeSegment compresses ops (stored crdt.Op encodings of one origin, in
// seq order) into a segment.
func encodeSegment(origin string, ops [][]byte) (Segment, []byte, error) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write([]byte(segMagic))
	s := Segment{Origin: origin, MinWall: math.MaxInt64}
	var l [binary.MaxVarintLen64]byte
	for i, b := range ops {
		var op crdt.Op
		if err := bson.Unmarshal(b, &op); err != nil {
			return Segment{}, nil, fmt.Errorf("archive: op %d of the batch: %w", i, err)
		}
		if op.Origin != origin {
			return Segment{}, nil, fmt.Errorf("archive: op %s:%d in a batch of %s", op.Origin, op.Seq, origin)
		}
		if i == 0 {
			s.First = op.Seq
		} else if op.Seq != s.Last+1 {
			return Segment{}, nil, fmt.Errorf("archive: %s:%d follows %d", origin, op.Seq, s.Last)
		}
		s.Last = op.Seq
		s.MinWall, s.MaxWall = min(s.MinWall, op.TS.Wall), max(s.MaxWall, op.TS.Wall)
		zw.Write(l[:binary.PutUvarint(l[:], uint64(len(b)))])
		zw.Write(b)
	}
	if err := zw.Close(); err != nil {
		return Segment{}, nil, err
	}
	sum := sha256.Sum256(buf.Bytes())
	s.SHA256 = hex.EncodeToString(sum[:])
	return s, buf.Bytes(), nil
}

// SegmentError names a segment that is not what its name says: cut
// short, altered, or holding other ops. Nothing of it is applied.
type SegmentError struct {
	Name string
	Err  error
}

func (e *SegmentError) Error() string {
	return fmt.Sprintf("archive segment %s is damaged: %v", e.Name, e.Err)
}
func (e *SegmentError) Unwrap() error { return e.Err }

// readSegment fetches segment s, checks it against its name and returns
// its ops; any mismatch is a *SegmentError.
func readSegment(ctx context.Context, st Store, s Segment) ([]*crdt.Op, error) {
	b, err := st.Get(ctx, s.Name())
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	return decodeSegment(s, b)
}

func decodeSegment(s Segment, b []byte) ([]*crdt.Op, error) {
	bad := func(format string, args ...any) error {
		return &SegmentError{Name: s.Name(), Err: fmt.Errorf(format, args...)}
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != s.SHA256 {
		return nil, bad("checksum mismatch (%d bytes: cut short or corrupted)", len(b))
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, bad("%v", err)
	}
	br := bufio.NewReader(zr)
	magic := make([]byte, len(segMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != segMagic {
		return nil, bad("not an op-log segment")
	}
	var ops []*crdt.Op
	for {
		n, err := binary.ReadUvarint(br)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil || n > maxOp {
			return nil, bad("malformed op record (%v)", err)
		}
		rec := make([]byte, n)
		if _, err := io.ReadFull(br, rec); err != nil {
			return nil, bad("op record cut short")
		}
		op := new(crdt.Op)
		if err := bson.Unmarshal(rec, op); err != nil {
			return nil, bad("op %d: %v", len(ops)+1, err)
		}
		want := s.First + uint64(len(ops))
		if op.Origin != s.Origin || op.Seq != want || op.TS.Wall < s.MinWall || op.TS.Wall > s.MaxWall {
			return nil, bad("holds op %s:%d (wall %d), expected %s:%d", op.Origin, op.Seq, op.TS.Wall, s.Origin, want)
		}
		ops = append(ops, op)
	}
	if uint64(len(ops)) != s.Last-s.First+1 {
		return nil, bad("holds %d ops, its name says %d", len(ops), s.Last-s.First+1)
	}
	return ops, nil
}

// listSegments returns every origin's segments, in seq order.
func listSegments(ctx context.Context, st Store, origin string) (map[string][]Segment, error) {
	prefix := opsDir
	if origin != "" {
		prefix += origin + "/"
	}
	names, err := st.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	out := map[string][]Segment{}
	for _, n := range names {
		if s, ok := parseSegment(n); ok {
			out[s.Origin] = append(out[s.Origin], s)
		}
	}
	return out, nil
}
