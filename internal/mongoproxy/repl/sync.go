package repl

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/replica"
)

// Initial sync. The node that needs one (new, wiped, or behind a peer's
// trimmed log) runs this state machine in syncLoop:
//
//	waiting  writes blocked; look for a source: an alive peer whose
//	         heartbeat says it is a synced replica. With none after
//	         BootstrapWait, and every alive peer heard and unsynced (or no
//	         peer at all), this node starts the cluster: it is synced as is.
//	syncing  ask the source (syncReq); it answers with its applied vector
//	         (syncBegin), then its snapshot in numbered chunks (syncItems),
//	         at most syncWindow chunks beyond the last syncAck, then syncEnd.
//	         Only after syncBegin does this node empty its replicated data
//	         (BeginSync); each chunk is stored (LoadSnapshot) and acked; at
//	         syncEnd the op log's watermarks become the vector (FinishSync)
//	         and streaming takes over from there. Any loss, timeout or error
//	         abandons the attempt; the next one starts from scratch.
//	synced   streaming; writes are allowed once every alive peer has been
//	         heard since (its clock observed), or after 3 s.

const (
	syncChunkBytes = 256 << 10
	syncChunkItems = 2000
	syncWindow     = 8
	maxSyncServers = 2
)

// syncClient is this node's sync in progress.
type syncClient struct {
	session uint64
	src     string
	ch      chan syncMsg
}

// syncServer is a sync this node serves to a peer.
type syncServer struct {
	session uint64
	peer    string
	cancel  context.CancelFunc
	mu      sync.Mutex
	acked   uint64
	moved   chan struct{}
}

func newSession() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) | 1
}

func (r *Replicator) syncLoop() {
	defer r.wg.Done()
	backoff := time.Second
	waitingSince := time.Now()
	var failed string
	var syncedAt time.Time
	allowed := r.isSynced()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		switch r.state.Load() {
		case stateSynced:
			if reason := r.resync.Load(); reason != nil {
				r.core.BlockWrites("resync: " + *reason)
				r.state.Store(stateWaiting)
				waitingSince, allowed = time.Now(), false
				continue
			}
			if !allowed && r.peersHeardSince(syncedAt) {
				r.core.AllowWrites()
				allowed = true
				r.log.Info("writes accepted", "origin", r.origin)
			}
		case stateWaiting:
			src, bootstrap := r.pickSource(failed, time.Since(waitingSince) > r.opts.BootstrapWait)
			switch {
			case src != "":
				r.state.Store(stateSyncing)
				start := time.Now()
				docs, err := r.runSync(src)
				if err != nil {
					r.met.syncs.WithLabelValues("failed").Inc()
					if r.ctx.Err() != nil {
						return
					}
					r.log.Warn("initial sync failed; trying again", "source", src, "err", err, "retry_in", backoff)
					r.state.Store(stateWaiting)
					failed = src
					select {
					case <-r.ctx.Done():
						return
					case <-time.After(backoff):
					}
					backoff = min(2*backoff, 30*time.Second)
					continue
				}
				r.met.syncs.WithLabelValues("done").Inc()
				took := time.Since(start)
				r.met.syncDocsPerSecond.Set(float64(docs) / took.Seconds())
				r.log.Info("initial sync done", "source", src, "documents", docs, "took", took.Round(time.Millisecond))
				r.resync.Store(nil)
				// The documents now carry the source's compaction floors and the
				// log the source's positions: what this node knew of frontiers
				// before says nothing about them.
				zero := crdt.Timestamp{}
				r.maxStable.Store(&zero)
				r.resetFrontiers()
				r.state.Store(stateSynced)
				backoff, failed, syncedAt = time.Second, "", time.Now()
				continue
			case bootstrap:
				if err := r.core.FinishSync(r.ctx, nil); err != nil {
					if r.ctx.Err() != nil {
						return
					}
					r.log.Warn("marking the database synced", "err", err)
					break
				}
				r.log.Info("no synced peer: this node starts the cluster's data as it is", "origin", r.origin)
				r.resetFrontiers()
				r.state.Store(stateSynced)
				syncedAt = time.Now()
				continue
			}
		}
		select {
		case <-r.ctx.Done():
			return
		case <-r.syncWake:
		case <-tick.C:
		}
	}
}

// peersHeardSince reports whether every alive peer has sent a heartbeat
// since t (so this node's clock has observed theirs), or 3 s have passed.
func (r *Replicator) peersHeardSince(t time.Time) bool {
	if time.Since(t) > 3*time.Second {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.nodes {
		if n.inMap && n.mapState == nodemap.Alive && n.heard.Before(t) {
			return false
		}
	}
	return true
}

// pickSource chooses an alive, synced peer to sync from (avoiding the one
// that just failed if there is another), or says to bootstrap: mayBoot and
// no alive peer is synced or syncing, and every alive peer has been heard.
func (r *Replicator) pickSource(failed string, mayBoot bool) (src string, bootstrap bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var cands []string
	allHeard, anySyncing := true, false
	for id, n := range r.nodes {
		if !n.inMap || n.mapState != nodemap.Alive {
			continue
		}
		if n.heard.IsZero() || time.Since(n.heard) > 5*r.opts.HeartbeatInterval+time.Second {
			allHeard = false
			continue
		}
		if n.flags&hbSyncing != 0 {
			anySyncing = true
		}
		if n.flags&hbSynced != 0 && n.flags&hbSyncing == 0 {
			cands = append(cands, id)
		}
	}
	if len(cands) > 0 {
		slices.Sort(cands)
		for _, c := range cands {
			if c != failed {
				return c, false
			}
		}
		return cands[0], false
	}
	// A resync never bootstraps: this node's data is known to be behind.
	return "", mayBoot && allHeard && !anySyncing && r.resync.Load() == nil
}

// runSync copies src's snapshot. It returns the number of documents.
func (r *Replicator) runSync(src string) (int, error) {
	sc := &syncClient{session: newSession(), src: src, ch: make(chan syncMsg, 2*syncWindow+4)}
	r.mu.Lock()
	r.client = sc
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.client = nil
		r.mu.Unlock()
	}()
	// Wait for applies in progress; receivers apply nothing from now on
	// (the state is no longer synced, which they check under the gate).
	r.applyGate.Lock()
	r.applyGate.Unlock() //lint:ignore SA2001 the empty section is the point: a barrier

	r.log.Info("initial sync starting", "source", src, "session", sc.session)
	if err := r.sendSync(src, &syncMsg{typ: msgSyncReq, session: sc.session}); err != nil {
		return 0, err
	}
	cancel := func() { _ = r.sendSync(src, &syncMsg{typ: msgSyncCancel, session: sc.session}) }
	next := func() (syncMsg, error) {
		select {
		case <-r.ctx.Done():
			return syncMsg{}, r.ctx.Err()
		case m := <-sc.ch:
			return m, nil
		case <-time.After(r.opts.SyncTimeout):
			cancel()
			return syncMsg{}, fmt.Errorf("no progress from %s for %v", src, r.opts.SyncTimeout)
		}
	}
	m, err := next()
	if err != nil {
		return 0, err
	}
	switch m.typ {
	case msgSyncBegin:
	case msgSyncEnd:
		return 0, fmt.Errorf("%s refused: %s", src, m.errText)
	default:
		cancel()
		return 0, fmt.Errorf("unexpected message %d from %s", m.typ, src)
	}
	vector := m.vector
	// The source's clock comes before anything is emptied: a source whose
	// clock runs ahead is refused (the next attempt prefers another).
	if err := r.core.ObserveClock(m.clock); err != nil {
		r.clockRefused(src, "sync", 1, err)
		cancel()
		return 0, fmt.Errorf("refusing %s as a sync source: %w", src, err)
	}
	ctx := r.ctx
	if err := r.core.BeginSync(ctx); err != nil {
		cancel()
		return 0, err
	}
	r.met.syncInProgress.Set(1)
	defer r.met.syncInProgress.Set(0)
	var chunk uint64
	docs := 0
	refused := refusedItems{}
	defer func() { r.logRefused(src, refused) }()
	for {
		m, err := next()
		if err != nil {
			return docs, err
		}
		switch m.typ {
		case msgSyncItems:
			if m.chunk != chunk+1 {
				cancel()
				return docs, fmt.Errorf("chunk %d lost (got %d)", chunk+1, m.chunk)
			}
			skipped, err := r.core.LoadSnapshot(ctx, m.items)
			refused.add(skipped)
			r.met.syncRefused.WithLabelValues(src).Add(float64(len(skipped)))
			if err != nil {
				cancel()
				return docs, err
			}
			chunk = m.chunk
			for _, it := range m.items {
				if it.Kind == replica.SnapDoc {
					docs++
				}
			}
			for _, it := range skipped {
				if it.Kind == replica.SnapDoc {
					docs--
				}
			}
			r.met.syncDocs.Add(float64(len(m.items)))
			if err := r.sendSync(src, &syncMsg{typ: msgSyncAck, session: sc.session, chunk: chunk}); err != nil {
				cancel()
				return docs, err
			}
		case msgSyncEnd:
			if m.errText != "" {
				return docs, fmt.Errorf("%s: %s", src, m.errText)
			}
			if m.chunk != chunk {
				return docs, fmt.Errorf("%s sent %d chunks, %d arrived", src, m.chunk, chunk)
			}
			if err := r.core.FinishSync(ctx, vector); err != nil {
				return docs, err
			}
			return docs, nil
		default:
			cancel()
			return docs, fmt.Errorf("unexpected message %d from %s", m.typ, src)
		}
	}
}

// refusedItems tallies the snapshot items of one sync that were not
// stored, by namespace and reason (at most maxRefusedNS namespaces named).
type refusedItems struct {
	items int
	byNS  map[string]int
	more  int // items of namespaces beyond maxRefusedNS
}

const maxRefusedNS = 50

func (ri *refusedItems) add(items []replica.RefusedItem) {
	for _, it := range items {
		ri.items++
		key := it.NS + " (" + it.Why + ")"
		if _, ok := ri.byNS[key]; !ok && len(ri.byNS) >= maxRefusedNS {
			ri.more++
			continue
		}
		if ri.byNS == nil {
			ri.byNS = map[string]int{}
		}
		ri.byNS[key]++
	}
}

// logRefused logs, once per sync, what of src's snapshot was not stored.
func (r *Replicator) logRefused(src string, ri refusedItems) {
	if ri.items == 0 {
		return
	}
	nss := make([]string, 0, len(ri.byNS))
	for ns, n := range ri.byNS {
		nss = append(nss, fmt.Sprintf("%s: %d", ns, n))
	}
	slices.Sort(nss)
	if ri.more > 0 {
		nss = append(nss, fmt.Sprintf("%d more items in other namespaces", ri.more))
	}
	r.log.Warn("initial sync: items of namespaces this node does not replicate were not stored (the peer's mongo.replicate/local_only differ from this node's, or it sends what it should not)",
		"peer", src, "items", ri.items, "namespaces", nss)
}

// sendSync sends on the sync topic, waiting out a full queue for a while.
func (r *Replicator) sendSync(to string, m *syncMsg) error {
	msg := m.encode()
	deadline := time.Now().Add(r.opts.SyncTimeout)
	for {
		err := r.opts.Transport.Send(to, SyncTopic, msg)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrQueueFull) || time.Now().After(deadline) {
			return fmt.Errorf("send to %s: %w", to, err)
		}
		select {
		case <-r.ctx.Done():
			return r.ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
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
