package repl

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/edgenode/edgenode/internal/replica"
)

// The source's side of an initial sync: a peer asks (syncReq), this node
// answers with its applied vector and clock (syncBegin), then its snapshot
// in numbered chunks, at most syncWindow beyond the peer's last ack, then
// syncEnd. At most maxSyncServers at once.

// syncServer is a sync this node serves to a peer.
type syncServer struct {
	session uint64
	peer    string
	cancel  context.CancelFunc
	mu      sync.Mutex
	acked   uint64
	moved   chan struct{}
}

// handleSync dispatches messages of topic repl-sync (never waits).
func (r *Replicator) handleSync(from string, msg []byte) {
	m, err := decodeSync(msg)
	if err != nil {
		r.bad(from, "sync", err)
		return
	}
	switch m.typ {
	case msgSyncReq:
		r.serveSync(from, m.session)
	case msgSyncAck, msgSyncCancel:
		r.mu.Lock()
		s := r.sessions[m.session]
		r.mu.Unlock()
		if s == nil || s.peer != from {
			return
		}
		if m.typ == msgSyncCancel {
			s.cancel()
			return
		}
		s.mu.Lock()
		if m.chunk > s.acked {
			s.acked = m.chunk
		}
		s.mu.Unlock()
		select {
		case s.moved <- struct{}{}:
		default:
		}
	default:
		r.mu.Lock()
		c := r.client
		r.mu.Unlock()
		if c == nil || c.session != m.session || c.src != from {
			return
		}
		select {
		case c.ch <- m:
		default:
			// The source respects the window, so this is a confused peer;
			// the sync notices the missing chunk and starts over.
		}
	}
}

// serveSync starts serving a snapshot to peer.
func (r *Replicator) serveSync(peer string, session uint64) {
	refuse := func(why string) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.stopping {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			_ = r.sendSync(peer, &syncMsg{typ: msgSyncEnd, session: session, errText: why})
		}()
	}
	if !r.isSynced() {
		refuse("not a synced replica")
		return
	}
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		return
	}
	if len(r.sessions) >= maxSyncServers {
		r.mu.Unlock()
		refuse("busy")
		return
	}
	ctx, cancel := context.WithCancel(r.ctx)
	s := &syncServer{session: session, peer: peer, cancel: cancel, moved: make(chan struct{}, 1)}
	r.sessions[session] = s
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		defer func() {
			cancel()
			r.mu.Lock()
			delete(r.sessions, session)
			r.mu.Unlock()
		}()
		start := time.Now()
		chunks, items, err := r.sendSnapshot(ctx, s)
		end := &syncMsg{typ: msgSyncEnd, session: session, chunk: chunks}
		if err != nil {
			end.errText = err.Error()
			if end.errText == "" {
				end.errText = "failed"
			}
		}
		if serr := r.sendSync(peer, end); serr != nil && err == nil {
			err = serr
		}
		if err != nil {
			r.log.Warn("serving an initial sync failed", "peer", peer, "err", err)
			return
		}
		r.log.Info("served an initial sync", "peer", peer, "items", items, "chunks", chunks, "took", time.Since(start).Round(time.Millisecond))
	}()
}

func (r *Replicator) sendSnapshot(ctx context.Context, s *syncServer) (chunks uint64, items int, err error) {
	vector := r.core.AppliedVector()
	// The clock is read after the vector: the new node's clock then passes
	// every op the snapshot holds.
	begin := &syncMsg{typ: msgSyncBegin, session: s.session, vector: vector, clock: r.core.Frontier()}
	if err := r.sendSync(s.peer, begin); err != nil {
		return 0, 0, err
	}
	var buf []replica.SnapshotItem
	size := 0
	flush := func() error {
		if len(buf) == 0 {
			return nil
		}
		chunks++
		// Flow control: at most syncWindow chunks beyond the last ack.
		for {
			s.mu.Lock()
			acked := s.acked
			s.mu.Unlock()
			if chunks-acked <= syncWindow {
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-s.moved:
			case <-time.After(r.opts.SyncTimeout):
				return fmt.Errorf("no ack from %s for %v", s.peer, r.opts.SyncTimeout)
			}
		}
		m := &syncMsg{typ: msgSyncItems, session: s.session, chunk: chunks, items: buf}
		if err := r.sendSync(s.peer, m); err != nil {
			return err
		}
		items += len(buf)
		buf, size = nil, 0
		return nil
	}
	err = r.core.Snapshot(ctx, func(it replica.SnapshotItem) error {
		buf = append(buf, it)
		size += len(it.Doc) + len(it.NS) + 8
		if size >= syncChunkBytes || len(buf) >= syncChunkItems {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err == nil {
		// Wait for the last acks, so that syncEnd is not sent while chunks
		// may still be dropped from a full queue on the way.
		for err == nil {
			s.mu.Lock()
			acked := s.acked
			s.mu.Unlock()
			if acked >= chunks {
				break
			}
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-s.moved:
			case <-time.After(r.opts.SyncTimeout):
				err = fmt.Errorf("no ack from %s for %v", s.peer, r.opts.SyncTimeout)
			}
		}
	}
	return chunks, items, err
}
