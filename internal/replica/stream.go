package replica

import (
	"context"
	"sync"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// subscribers are the channels told when this node's ops were appended or
// applied (see Subscribe). Their mutex is a leaf; a send never blocks.
type subscribers struct {
	check *rankChecker
	mu    sync.Mutex
	seq   uint64
	m     map[uint64]chan struct{}
}

// Subscribe returns a channel that receives a value whenever this node's
// ops were appended to the log (before they are applied: replication can
// send them at once) or applied; values coalesce (the channel holds one).
// cancel unsubscribes.
func (r *Replica) Subscribe() (notify <-chan struct{}, cancel func()) {
	s := &r.subs
	ch := make(chan struct{}, 1)
	s.check.acquire(rankLeaf)
	s.mu.Lock()
	if s.m == nil {
		s.m = map[uint64]chan struct{}{}
	}
	s.seq++
	id := s.seq
	s.m[id] = ch
	s.mu.Unlock()
	s.check.release(rankLeaf)
	return ch, func() {
		s.check.acquire(rankLeaf)
		s.mu.Lock()
		delete(s.m, id)
		s.mu.Unlock()
		s.check.release(rankLeaf)
	}
}

// notify tells every subscriber that local ops moved.
func (r *Replica) notify() {
	s := &r.subs
	s.check.acquire(rankLeaf)
	defer s.check.release(rankLeaf)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.m {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// ReadOps returns the stored encodings of origin's ops after seq after
// (see Replication).
func (r *Replica) ReadOps(origin string, after uint64, maxOps, maxBytes int) ([][]byte, error) {
	return r.olog.ReadRaw(origin, after, maxOps, maxBytes)
}

// LocalOp returns this node's op seq, or nil if the log does not hold it.
func (r *Replica) LocalOp(seq uint64) (*crdt.Op, error) { return r.olog.Get(r.node, seq) }

// LastSeq is the seq of this node's newest op.
func (r *Replica) LastSeq() uint64 { return r.olog.LastSeq(r.node) }

// FirstSeq is the seq of the oldest op of this node the log still holds
// (0: none).
func (r *Replica) FirstSeq() uint64 { return r.olog.FirstSeq(r.node) }

// Applied is the position up to which origin's ops are applied here.
func (r *Replica) Applied(origin string) uint64 { return r.olog.Applied(origin) }

// AppliedVector returns, for every origin, the position up to which all
// its ops are applied to this database. Taken before Snapshot, it is the
// point from which a node loading the snapshot must stream: every op at
// or below it is in the documents Snapshot reads afterwards (documents
// only move forward), and ops above it that are already in them are
// harmless to apply again.
func (r *Replica) AppliedVector() map[string]uint64 { return r.olog.AppliedAll() }

// PeerAcks returns every known peer's recorded position in this node's ops.
func (r *Replica) PeerAcks() map[string]uint64 { return r.olog.PeerAcks() }

// SetPeerAck durably records that peer has this node's ops up to seq.
func (r *Replica) SetPeerAck(peer string, seq uint64) error { return r.olog.SetPeerAck(peer, seq) }

// RemovePeer forgets a peer's position (a node gone for good).
func (r *Replica) RemovePeer(peer string) error { return r.olog.RemovePeer(peer) }

// TrimBelow deletes the ops nobody needs any more, keeping each origin's
// ops above keep[origin] in any case.
func (r *Replica) TrimBelow(keep map[string]uint64) (int, error) { return r.olog.TrimBelow(keep) }

// MaxTimestamp is the newest timestamp the log holds durably.
func (r *Replica) MaxTimestamp() crdt.Timestamp { return r.olog.MaxTimestamp() }

// Fence durably raises MaxTimestamp to at least ts.
func (r *Replica) Fence(ctx context.Context, ts crdt.Timestamp) error { return r.olog.Fence(ctx, ts) }
