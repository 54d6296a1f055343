package archive

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// BaseMark completes a base snapshot (a backup of package backup under
// base/<id>/): the newest op timestamp the node's log held once the
// snapshot was read. Every op the snapshot reflects is stamped at or below
// Upper, so the base may serve a restore to any time at or after it.
type BaseMark struct {
	Node   string            `json:"node"`
	Origin string            `json:"origin"`
	Upper  backup.Clock      `json:"upper"`
	Vector map[string]uint64 `json:"vector"`
	Done   time.Time         `json:"done"`
}

func (m *BaseMark) upper() crdt.Timestamp {
	return crdt.Timestamp{Wall: m.Upper.Wall, Logical: m.Upper.Logical, Node: m.Upper.Node}
}

// base is one complete base snapshot.
type base struct {
	ID   string
	Mark BaseMark
}

// baseStore is the archive's base/ folder as a backup.Store.
type baseStore struct{ st Store }

func (b baseStore) Put(ctx context.Context, name string, data []byte) error {
	return b.st.Put(ctx, baseDir+name, data)
}
func (b baseStore) Get(ctx context.Context, name string) ([]byte, error) {
	return b.st.Get(ctx, baseDir+name)
}
func (b baseStore) String() string { return b.st.String() + "/" + strings.TrimSuffix(baseDir, "/") }
func (b baseStore) Backups(ctx context.Context) ([]string, error) {
	bases, err := listBases(ctx, b.st)
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(bases))
	for i, x := range bases {
		ids[i] = x.ID
	}
	return ids, nil
}

// listBases returns the complete base snapshots, oldest first (by Upper).
func listBases(ctx context.Context, st Store) ([]base, error) {
	names, err := st.List(ctx, baseDir)
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	var out []base
	for _, n := range names {
		id, ok := strings.CutSuffix(strings.TrimPrefix(n, baseDir), "/"+baseMark)
		if !ok || strings.Contains(id, "/") {
			continue
		}
		b, err := st.Get(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("archive: %w", err)
		}
		var m BaseMark
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("archive: base %s: %s: %w", id, baseMark, err)
		}
		out = append(out, base{ID: id, Mark: m})
	}
	slices.SortFunc(out, func(a, b base) int { return a.Mark.upper().Compare(b.Mark.upper()) })
	return out, nil
}

// takeBase writes a base snapshot of src: the backup stream (package
// backup) read straight into base/<id>/, then its mark.
func takeBase(ctx context.Context, st Store, node string, src Source) (string, *backup.Manifest, error) {
	pr, pw := io.Pipe()
	werr := make(chan error, 1)
	go func() {
		_, err := backup.Write(ctx, pw, node, src)
		pw.CloseWithError(err)
		werr <- err
	}()
	m, id, err := backup.Take(ctx, pr, baseStore{st}, nil)
	pr.CloseWithError(errors.New("archive: base snapshot abandoned"))
	if wErr := <-werr; err == nil && wErr != nil {
		err = wErr
	}
	if err != nil {
		return "", nil, err
	}
	// Read once the whole snapshot was: nothing it holds is newer.
	up := src.MaxTimestamp()
	mark := BaseMark{Node: node, Origin: m.Origin, Vector: m.Vector, Done: time.Now().UTC(),
		Upper: backup.Clock{Wall: up.Wall, Logical: up.Logical, Node: up.Node}}
	b, err := json.MarshalIndent(mark, "", "  ")
	if err != nil {
		return "", nil, err
	}
	if err := st.Put(ctx, baseDir+id+"/"+baseMark, b); err != nil {
		return "", nil, err
	}
	return id, m, nil
}

// deleteBase removes base id (its mark first, so a half-deleted base is
// never taken for a complete one).
func deleteBase(ctx context.Context, st Store, id string) error {
	if err := st.Delete(ctx, baseDir+id+"/"+baseMark); err != nil {
		return err
	}
	names, err := st.List(ctx, baseDir+id+"/")
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := st.Delete(ctx, n); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
