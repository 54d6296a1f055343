package backup

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

// Target is the replica a backup is restored into: *replica.Replica.
type Target interface {
	Origin() string
	BeginSync(ctx context.Context) error
	LoadSnapshot(ctx context.Context, items []replica.SnapshotItem) ([]replica.RefusedItem, error)
	FinishSync(ctx context.Context, vector map[string]uint64) error
	Fence(ctx context.Context, ts crdt.Timestamp) error
}

// Find returns the backup at st: the location itself when it holds a
// manifest (id ""), else its newest backup.
func Find(ctx context.Context, st Store) (id string, m *Manifest, err error) {
	b, err := st.Get(ctx, ManifestName)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", nil, err
	}
	if err != nil {
		ids, lerr := st.Backups(ctx)
		if lerr != nil {
			return "", nil, lerr
		}
		if len(ids) == 0 {
			return "", nil, fmt.Errorf("backup: no backup in %s (no %s there or in a folder under it)", st, ManifestName)
		}
		id = ids[len(ids)-1]
		if b, err = st.Get(ctx, id+"/"+ManifestName); err != nil {
			return "", nil, err
		}
	}
	m, err = parseManifest(b)
	if err != nil {
		return "", nil, fmt.Errorf("backup %s: %w", name(st, id), err)
	}
	return id, m, nil
}

func name(st Store, id string) string {
	if id == "" {
		return st.String()
	}
	return st.String() + "/" + id
}

func partPath(id, part string) string {
	if id == "" {
		return part
	}
	return id + "/" + part
}

// Verify reads every part of backup id and checks it against m: stored
// size, SHA-256, and the items it decodes to. It changes nothing.
func Verify(ctx context.Context, st Store, id string, m *Manifest) error {
	var got Counts
	for _, p := range m.Parts {
		err := eachItem(ctx, st, id, p, func(it replica.SnapshotItem) error {
			got.add(it.Kind)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if got != m.Counts {
		return fmt.Errorf("backup %s: its parts hold %+v, the manifest says %+v", name(st, id), got, m.Counts)
	}
	return nil
}

// eachItem reads part p, checks it and calls fn for each of its items.
func eachItem(ctx context.Context, st Store, id string, p Part, fn func(replica.SnapshotItem) error) error {
	where := name(st, id) + "/" + p.Name
	b, err := st.Get(ctx, partPath(id, p.Name))
	if err != nil {
		return fmt.Errorf("backup: part missing: %w", err)
	}
	if int64(len(b)) != p.Bytes {
		return fmt.Errorf("backup: %s is %d bytes, the manifest says %d (truncated or replaced)", where, len(b), p.Bytes)
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != p.SHA256 {
		return fmt.Errorf("backup: %s: checksum mismatch (corrupted)", where)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("backup: %s: %w", where, err)
	}
	br := bufio.NewReaderSize(zr, 256<<10)
	var items, raw int64
	for {
		kind, payload, err := readRecord(br)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("backup: %s: %w", where, err)
		}
		it, err := decodeItem(kind, payload)
		if err != nil {
			return fmt.Errorf("backup: %s: %w", where, err)
		}
		items++
		raw += int64(recordSize(len(payload)))
		if err := fn(it); err != nil {
			return err
		}
	}
	if items != p.Items || raw != p.RawBytes {
		return fmt.Errorf("backup: %s holds %d items (%d bytes), the manifest says %d (%d bytes)", where, items, raw, p.Items, p.RawBytes)
	}
	return nil
}

// Load restores backup id into t, which must be a new or wiped node's
// replica (its op log new, under a new incarnation): it empties t's
// replicated data, loads every item, makes the op log's applied positions
// the backup's vector, marks the database synced and fences the clock.
// Call Verify first: Load checks each part again, and one that changed
// since stops it before the database is marked synced. It returns the
// items t does not replicate (not stored).
func Load(ctx context.Context, st Store, id string, m *Manifest, t Target, progress func(loaded int64)) (refused []replica.RefusedItem, err error) {
	if err := t.BeginSync(ctx); err != nil {
		return nil, err
	}
	const batchItems = 1000
	var (
		batch  []replica.SnapshotItem
		loaded int64
	)
	store := func() error {
		if len(batch) == 0 {
			return nil
		}
		r, err := t.LoadSnapshot(ctx, batch)
		refused = append(refused, r...)
		loaded += int64(len(batch))
		batch = batch[:0]
		if progress != nil {
			progress(loaded)
		}
		return err
	}
	for _, p := range m.Parts {
		// A part is checked whole before any of it is stored.
		var items []replica.SnapshotItem
		if err := eachItem(ctx, st, id, p, func(it replica.SnapshotItem) error {
			items = append(items, it)
			return nil
		}); err != nil {
			return refused, err
		}
		for _, it := range items {
			batch = append(batch, it)
			if len(batch) >= batchItems {
				if err := store(); err != nil {
					return refused, err
				}
			}
		}
	}
	if err := store(); err != nil {
		return refused, err
	}
	if err := t.FinishSync(ctx, m.Vector); err != nil {
		return refused, err
	}
	if err := t.Fence(ctx, m.Clock.timestamp()); err != nil {
		return refused, err
	}
	return refused, nil
}
