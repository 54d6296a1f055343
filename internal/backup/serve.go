package backup

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

// Source is the replica a backup is read from: *replica.Replica.
type Source interface {
	Origin() string
	AppliedVector() map[string]uint64
	Frontier() crdt.Timestamp
	SyncedOrigin(ctx context.Context) (string, error)
	Snapshot(ctx context.Context, emit func(replica.SnapshotItem) error) error
}

// Handler serves the backup stream (GET /v1/mongo/backup) of the replica
// source returns (nil, or an error, while the node is not a synced
// replica: 503). One backup runs at a time (another gets 409). The route
// must be behind the admin token: the stream is the whole database.
type Handler struct {
	Node   string
	Source func() (Source, error)
	Log    *slog.Logger
	busy   atomic.Bool
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	src, err := h.Source()
	if err == nil && src == nil {
		err = errors.New("the Mongo layer is not running")
	}
	if err != nil {
		http.Error(w, "no backup: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	if !h.busy.CompareAndSwap(false, true) {
		http.Error(w, "a backup of this node is already running", http.StatusConflict)
		return
	}
	defer h.busy.Store(false)
	// Only a complete replica is worth a backup: a node waiting for (or
	// in) an initial sync has part of the data at best.
	if o, err := src.SyncedOrigin(r.Context()); err != nil || o != src.Origin() {
		why := "this node's database is not a synced replica (initial sync pending or running)"
		if err != nil {
			why = err.Error()
		}
		http.Error(w, "no backup: "+why, http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/x-edgenode-backup")
	start := time.Now()
	t, err := Write(r.Context(), w, h.Node, src)
	if err != nil {
		h.Log.Warn("backup stream failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	h.Log.Info("backup streamed", "remote", r.RemoteAddr, "items", t.Counts.Items(), "documents", t.Counts.Documents, "took", time.Since(start).Round(time.Millisecond))
}

// Write writes src's backup stream to w and returns its trailer. A failure
// after the header is written into the stream as an error record (the
// reader then refuses the stream with it).
func Write(ctx context.Context, w io.Writer, node string, src Source) (*Trailer, error) {
	sum := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, sum), 256<<10)
	hdr := Header{Version: Version, Node: node, Origin: src.Origin(), TakenAt: time.Now().UTC()}
	// The vector first, then the clock, then the documents: see the
	// package documentation and repl's initial sync, which does the same.
	hdr.Vector = src.AppliedVector()
	hdr.Clock = clockOf(src.Frontier())
	hb, err := json.Marshal(hdr)
	if err != nil {
		return nil, err
	}
	if _, err := bw.WriteString(streamMagic); err != nil {
		return nil, err
	}
	if err := writeRecord(bw, recHeader, hb); err != nil {
		return nil, err
	}
	var t Trailer
	err = src.Snapshot(ctx, func(it replica.SnapshotItem) error {
		t.Counts.add(it.Kind)
		return writeItem(bw, it)
	})
	if err == nil {
		// A resync that began while the snapshot was read emptied the
		// database under it: what was read is not a replica any more.
		if o, serr := src.SyncedOrigin(ctx); serr != nil || o != src.Origin() {
			err = errors.Join(errors.New("the database stopped being a synced replica during the backup (a resync began)"), serr)
		}
	}
	if err != nil {
		_ = writeRecord(bw, recError, []byte(err.Error()))
		_ = bw.Flush()
		return nil, fmt.Errorf("backup: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	t.SHA256 = hexSum(sum)
	tb, err := json.Marshal(t)
	if err != nil {
		return nil, err
	}
	if err := writeRecord(bw, recTrailer, tb); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	return &t, nil
}

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }
