package backup

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

// Format names the manifest's format; Version is the one this package
// writes and the only one it reads.
const (
	Format  = "edgenode-backup"
	Version = 1

	streamMagic = "EDGEBK1\n"

	// ManifestName is the manifest's name in a backup; it is written last.
	ManifestName = "manifest.json"

	// PartBytes is about how many item bytes (before compression) one
	// part holds: small enough to hold in memory while it is uploaded or
	// checked, large enough that a big database makes few objects.
	PartBytes = 16 << 20

	// maxRecord bounds one record: a document is at most 16 MiB in
	// MongoDB, plus its namespace.
	maxRecord = 17 << 20
)

// Record kinds of the stream besides the snapshot items' own kinds.
const (
	recHeader  = 'H'
	recTrailer = 'E'
	recError   = 'X'
)

// Header opens a stream: whose replica it is and its op-log position.
type Header struct {
	Version int    `json:"version"`
	Node    string `json:"node"`
	Origin  string `json:"origin"`
	// Vector is the applied vector read before the snapshot.
	Vector map[string]uint64 `json:"vector"`
	// Clock is the node's clock read after the vector; a node restored
	// from the backup resumes its clock above it, as an initial sync
	// observes its source's clock.
	Clock   Clock     `json:"clock"`
	TakenAt time.Time `json:"taken_at"`
}

// Clock is a crdt.Timestamp in JSON.
type Clock struct {
	Wall    int64  `json:"wall"`
	Logical uint32 `json:"logical"`
	Node    string `json:"node"`
}

func clockOf(ts crdt.Timestamp) Clock {
	return Clock{Wall: ts.Wall, Logical: ts.Logical, Node: ts.Node}
}
func (c Clock) timestamp() crdt.Timestamp {
	return crdt.Timestamp{Wall: c.Wall, Logical: c.Logical, Node: c.Node}
}

// Counts are a backup's items by kind.
type Counts struct {
	Collections int64 `json:"collections"`
	Indexes     int64 `json:"indexes"`
	Documents   int64 `json:"documents"`
	Tombstones  int64 `json:"tombstones"`
	DDL         int64 `json:"ddl"`
}

// Items is the total.
func (c Counts) Items() int64 { return c.Collections + c.Indexes + c.Documents + c.Tombstones + c.DDL }

func (c *Counts) add(k replica.SnapshotKind) {
	switch k {
	case replica.SnapCollection:
		c.Collections++
	case replica.SnapIndex:
		c.Indexes++
	case replica.SnapDoc:
		c.Documents++
	case replica.SnapTombstone:
		c.Tombstones++
	case replica.SnapDDL:
		c.DDL++
	}
}

// Trailer closes a stream.
type Trailer struct {
	Counts Counts `json:"counts"`
	// SHA256 is the hex SHA-256 of every stream byte before the trailer
	// record.
	SHA256 string `json:"sha256"`
}

// Part is one file of a backup.
type Part struct {
	Name     string `json:"name"`
	Bytes    int64  `json:"bytes"`     // compressed, as stored
	RawBytes int64  `json:"raw_bytes"` // item records before compression
	Items    int64  `json:"items"`
	SHA256   string `json:"sha256"` // of the stored (compressed) bytes
}

// Manifest describes a complete backup.
type Manifest struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	Header
	Counts      Counts `json:"counts"`
	Bytes       int64  `json:"bytes"`     // every part, compressed
	RawBytes    int64  `json:"raw_bytes"` // every part, uncompressed
	Parts       []Part `json:"parts"`
	Compression string `json:"compression"`
	// Checksum is the hex SHA-256 of the manifest encoded with Checksum
	// empty.
	Checksum string `json:"checksum"`
}

var partName = regexp.MustCompile(`^part-[0-9]{6}\.gz$`)

// seal sets m.Checksum and returns the encoded manifest.
func (m *Manifest) seal() ([]byte, error) {
	m.Checksum = ""
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	m.Checksum = hex.EncodeToString(sum[:])
	return json.MarshalIndent(m, "", "  ")
}

// parseManifest decodes and checks a manifest.
func parseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest is not valid JSON (corrupted or truncated): %w", err)
	}
	if m.Format != Format {
		return nil, fmt.Errorf("not an edgenode backup manifest (format %q)", m.Format)
	}
	if m.Version != Version {
		return nil, fmt.Errorf("backup format version %d; this edgenode reads version %d", m.Version, Version)
	}
	want := m.Checksum
	c := m
	if _, err := c.seal(); err != nil {
		return nil, err
	}
	if c.Checksum != want {
		return nil, errors.New("manifest checksum mismatch: the manifest was altered or corrupted")
	}
	if m.Compression != "gzip" {
		return nil, fmt.Errorf("unknown compression %q", m.Compression)
	}
	var items, raw, bytes int64
	for _, p := range m.Parts {
		if !partName.MatchString(p.Name) {
			return nil, fmt.Errorf("manifest names a part %q", p.Name)
		}
		items += p.Items
		raw += p.RawBytes
		bytes += p.Bytes
	}
	if items != m.Counts.Items() || raw != m.RawBytes || bytes != m.Bytes {
		return nil, errors.New("manifest totals do not match its parts")
	}
	if m.Origin == "" || m.Node == "" {
		return nil, errors.New("manifest names no node or origin")
	}
	return &m, nil
}

// writeRecord writes one record.
func writeRecord(w io.Writer, kind byte, payload ...[]byte) error {
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	var hdr [1 + binary.MaxVarintLen64]byte
	hdr[0] = kind
	l := binary.PutUvarint(hdr[1:], uint64(n))
	if _, err := w.Write(hdr[:1+l]); err != nil {
		return err
	}
	for _, p := range payload {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// writeItem writes a snapshot item as a record.
func writeItem(w io.Writer, it replica.SnapshotItem) error {
	var l [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(l[:], uint64(len(it.NS)))
	return writeRecord(w, byte(it.Kind), l[:n], []byte(it.NS), it.Doc)
}

// readRecord reads one record; io.EOF only before its first byte.
func readRecord(r recordReader) (kind byte, payload []byte, err error) {
	kind, err = r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, nil, noEOF(err)
	}
	if n > maxRecord {
		return 0, nil, fmt.Errorf("record of %d bytes (corrupted?)", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, noEOF(err)
	}
	return kind, payload, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// decodeItem decodes an item record's payload.
func decodeItem(kind byte, payload []byte) (replica.SnapshotItem, error) {
	switch replica.SnapshotKind(kind) {
	case replica.SnapCollection, replica.SnapIndex, replica.SnapDoc, replica.SnapTombstone, replica.SnapDDL:
	default:
		return replica.SnapshotItem{}, fmt.Errorf("unknown record kind %q", kind)
	}
	l, n := binary.Uvarint(payload)
	if n <= 0 || uint64(len(payload)-n) < l {
		return replica.SnapshotItem{}, errors.New("malformed item record")
	}
	ns := string(payload[n : n+int(l)])
	doc := bson.Raw(payload[n+int(l):])
	if err := doc.Validate(); err != nil {
		return replica.SnapshotItem{}, fmt.Errorf("malformed document in item record: %w", err)
	}
	return replica.SnapshotItem{Kind: replica.SnapshotKind(kind), NS: ns, Doc: doc}, nil
}
