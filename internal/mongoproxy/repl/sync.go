package repl

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
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
//	         peer at all), this node starts the cluster: it is synced as is;
//	         with RequirePeer and an empty op log, not before some peer
//	         has been heard.
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
	r       *Replicator
	session uint64
	src     string
	ch      chan syncMsg
}

func newSession() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) | 1
}

// syncLoopState is what syncLoop remembers between its steps.
type syncLoopState struct {
	backoff      time.Duration // before the next attempt after a failed one
	waitingSince time.Time
	failed       string    // the source of the last failed attempt
	syncedAt     time.Time // writes are allowed once every alive peer was heard since
	allowed      bool      // writes are allowed
	peerSeen     bool      // some peer was heard (RequirePeer no longer holds)
	awaitLogged  time.Time // when waiting for a first peer was last logged
}

func (r *Replicator) syncLoop() {
	defer r.wg.Done()
	st := &syncLoopState{backoff: time.Second, waitingSince: time.Now(), allowed: r.isSynced()}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		again, stop := false, false
		switch r.state.Load() {
		case stateSynced:
			again = r.syncedStep(st)
		case stateWaiting:
			again, stop = r.waitingStep(st)
		}
		if stop {
			return
		}
		if again {
			continue
		}
		select {
		case <-r.ctx.Done():
			return
		case <-r.syncWake:
		case <-tick.C:
		}
	}
}

// syncedStep allows writes once peers were heard, or goes back to waiting
// when a resync is needed (again: look at the new state at once).
func (r *Replicator) syncedStep(st *syncLoopState) (again bool) {
	if reason := r.resync.Load(); reason != nil {
		r.core.BlockWrites("resync: " + *reason)
		r.state.Store(stateWaiting)
		st.waitingSince, st.allowed = time.Now(), false
		return true
	}
	if !st.allowed && r.peersHeardSince(st.syncedAt) {
		r.core.AllowWrites()
		st.allowed = true
		r.log.Info("writes accepted", "origin", r.origin)
	}
	return false
}

// waitingStep syncs from a source if there is one, or bootstraps when it
// may.
func (r *Replicator) waitingStep(st *syncLoopState) (again, stop bool) {
	wait := r.opts.BootstrapWait
	if r.needPeer {
		// A peer heard first may be the cluster's first node, started
		// (with bootstrap) just now: it gets its own BootstrapWait to
		// become synced before this node gives up on it, so the two do
		// not both start the data.
		wait *= 2
	}
	holdBack := false
	if r.needPeer && !st.peerSeen {
		if st.peerSeen = r.heardAnyPeer(); st.peerSeen {
			st.waitingSince = time.Now()
			r.core.BlockWrites("waiting for an initial sync from a peer")
			r.log.Info("a peer was heard: looking for a sync source", "origin", r.origin)
		} else {
			holdBack = true
			// Said once it would have started alone, then every so often.
			if time.Since(st.waitingSince) > r.opts.BootstrapWait && time.Since(st.awaitLogged) >= awaitPeerLogEvery {
				st.awaitLogged = time.Now()
				r.log.Warn(r.awaitPeerReason(), "origin", r.origin, "waiting", time.Since(st.waitingSince).Round(time.Second))
			}
		}
	}
	src, bootstrap := r.pickSource(st.failed, !holdBack && time.Since(st.waitingSince) > wait)
	switch {
	case src != "":
		return r.syncFrom(st, src)
	case bootstrap:
		if err := r.core.FinishSync(r.ctx, nil); err != nil {
			if r.ctx.Err() != nil {
				return false, true
			}
			r.log.Warn("marking the database synced", "err", err)
			return false, false
		}
		r.log.Info("no synced peer: this node starts the cluster's data as it is", "origin", r.origin)
		r.resetFrontiers()
		r.state.Store(stateSynced)
		st.syncedAt = time.Now()
		return true, false
	}
	return false, false
}

// syncFrom runs one initial sync from src.
func (r *Replicator) syncFrom(st *syncLoopState, src string) (again, stop bool) {
	r.state.Store(stateSyncing)
	start := time.Now()
	docs, err := r.runSync(src)
	if err != nil {
		r.met.syncs.WithLabelValues("failed").Inc()
		if r.ctx.Err() != nil {
			return false, true
		}
		r.log.Warn("initial sync failed; trying again", "source", src, "err", err, "retry_in", st.backoff)
		r.state.Store(stateWaiting)
		st.failed = src
		select {
		case <-r.ctx.Done():
			return false, true
		case <-time.After(st.backoff):
		}
		st.backoff = min(2*st.backoff, 30*time.Second)
		return true, false
	}
	r.met.syncs.WithLabelValues("done").Inc()
	took := time.Since(start)
	r.met.syncDocsPerSecond.Set(float64(docs) / took.Seconds())
	r.log.Info("initial sync done", "source", src, "documents", docs, "took", took.Round(time.Millisecond))
	r.resync.Store(nil)
	// The documents now carry the source's compaction floors and the log
	// the source's positions: what this node knew of frontiers before
	// says nothing about them.
	zero := crdt.Timestamp{}
	r.maxStable.Store(&zero)
	r.resetFrontiers()
	r.state.Store(stateSynced)
	st.backoff, st.failed, st.syncedAt = time.Second, "", time.Now()
	return true, false
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

// awaitPeerLogEvery rate-limits the log line of a node waiting for its
// first peer (RequirePeer).
const awaitPeerLogEvery = 10 * time.Second

// heardAnyPeer reports whether some peer's heartbeat has been heard.
func (r *Replicator) heardAnyPeer() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.nodes {
		if !n.heard.IsZero() {
			return true
		}
	}
	return false
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
	sc := &syncClient{r: r, session: newSession(), src: src, ch: make(chan syncMsg, 2*syncWindow+4)}
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
	vector, err := sc.begin()
	if err != nil {
		return 0, err
	}
	r.met.syncInProgress.Set(1)
	defer r.met.syncInProgress.Set(0)
	return sc.load(vector)
}

// cancel tells the source this attempt is over.
func (sc *syncClient) cancel() {
	_ = sc.r.sendSync(sc.src, &syncMsg{typ: msgSyncCancel, session: sc.session})
}

// next waits for the source's next message (at most SyncTimeout).
func (sc *syncClient) next() (syncMsg, error) {
	r := sc.r
	select {
	case <-r.ctx.Done():
		return syncMsg{}, r.ctx.Err()
	case m := <-sc.ch:
		return m, nil
	case <-time.After(r.opts.SyncTimeout):
		sc.cancel()
		return syncMsg{}, fmt.Errorf("no progress from %s for %v", sc.src, r.opts.SyncTimeout)
	}
}

// begin waits for the source's syncBegin, checks its clock and empties
// this node's replicated data. It returns the source's applied vector.
func (sc *syncClient) begin() (map[string]uint64, error) {
	r, src := sc.r, sc.src
	m, err := sc.next()
	if err != nil {
		return nil, err
	}
	switch m.typ {
	case msgSyncBegin:
	case msgSyncEnd:
		return nil, fmt.Errorf("%s refused: %s", src, m.errText)
	default:
		sc.cancel()
		return nil, fmt.Errorf("unexpected message %d from %s", m.typ, src)
	}
	// The source's clock comes before anything is emptied: a source whose
	// clock runs ahead is refused (the next attempt prefers another).
	if err := r.core.ObserveClock(m.clock); err != nil {
		r.clockRefused(src, "sync", 1, err)
		sc.cancel()
		return nil, fmt.Errorf("refusing %s as a sync source: %w", src, err)
	}
	if err := r.core.BeginSync(r.ctx); err != nil {
		sc.cancel()
		return nil, err
	}
	return m.vector, nil
}

// load stores the snapshot's chunks, acknowledging each, until syncEnd,
// then finishes the sync at vector. It returns the documents stored.
func (sc *syncClient) load(vector map[string]uint64) (docs int, err error) {
	r, src := sc.r, sc.src
	var chunk uint64
	refused := refusedItems{}
	defer func() { r.logRefused(src, refused) }()
	for {
		m, err := sc.next()
		if err != nil {
			return docs, err
		}
		switch m.typ {
		case msgSyncItems:
			if m.chunk != chunk+1 {
				sc.cancel()
				return docs, fmt.Errorf("chunk %d lost (got %d)", chunk+1, m.chunk)
			}
			n, err := sc.store(m, &refused)
			docs += n
			if err != nil {
				sc.cancel()
				return docs, err
			}
			chunk = m.chunk
		case msgSyncEnd:
			if m.errText != "" {
				return docs, fmt.Errorf("%s: %s", src, m.errText)
			}
			if m.chunk != chunk {
				return docs, fmt.Errorf("%s sent %d chunks, %d arrived", src, m.chunk, chunk)
			}
			return docs, r.core.FinishSync(r.ctx, vector)
		default:
			sc.cancel()
			return docs, fmt.Errorf("unexpected message %d from %s", m.typ, src)
		}
	}
}

// store loads one chunk and acknowledges it. It returns the documents
// stored.
func (sc *syncClient) store(m syncMsg, refused *refusedItems) (docs int, err error) {
	r := sc.r
	skipped, err := r.core.LoadSnapshot(r.ctx, m.items)
	refused.add(skipped)
	r.met.syncRefused.WithLabelValues(sc.src).Add(float64(len(skipped)))
	if err != nil {
		return 0, err
	}
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
	return docs, r.sendSync(sc.src, &syncMsg{typ: msgSyncAck, session: sc.session, chunk: m.chunk})
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
