// Package replicatest is an in-memory fake of replica.Replication, for
// testing replication (package repl) without a database or an op log.
//
// A Core holds this node's ops in a slice (Write appends them), applies
// peers' ops by recording them in order, keeps positions, peer acks,
// clocks and the write gate in memory, and takes and loads snapshots of a
// list of items. It follows the interface's contract where replication
// can see it (ops applied in order per origin, clock skew refused, the
// applied vector reset by FinishSync); it stores no documents.
package replicatest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

// Core is the fake. Safe for concurrent use.
type Core struct {
	origin  string
	maxSkew time.Duration
	clock   *crdt.Clock

	mu       sync.Mutex
	now      time.Time // the wall clock (see SetWall); zero: time.Now
	local    []*crdt.Op
	first    uint64 // seq of local[0] (1 until trimmed)
	applied  map[string]uint64
	remote   map[string][]*crdt.Op
	acks     map[string]uint64
	maxTS    crdt.Timestamp
	stable   *crdt.Timestamp
	blocked  string
	synced   string
	items    []replica.SnapshotItem
	loaded   []replica.SnapshotItem
	subs     map[int]chan struct{}
	subSeq   int
	applyErr error
	perOp    time.Duration // SlowApply
	calls    map[string]int
}

var _ replica.Replication = (*Core)(nil)

// New returns a Core for origin that refuses clock readings more than
// maxSkew ahead of its wall clock.
func New(origin string, maxSkew time.Duration) *Core {
	c := &Core{origin: origin, maxSkew: maxSkew, first: 1, applied: map[string]uint64{}, remote: map[string][]*crdt.Op{},
		acks: map[string]uint64{}, subs: map[int]chan struct{}{}, calls: map[string]int{}}
	c.clock = crdt.NewClock(origin, c.wall)
	return c
}

func (c *Core) wall() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now.IsZero() {
		return time.Now()
	}
	return c.now
}

// SetWall sets the core's wall clock (zero: the real one).
func (c *Core) SetWall(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *Core) called(name string) {
	c.calls[name]++
}

// Calls returns how many times the named method was called.
func (c *Core) Calls(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[name]
}

// Write logs n local ops (updates of document "d<seq>" of ns) stamped by
// the core's clock, and tells subscribers. It returns the last seq.
func (c *Core) Write(ns string, n int) uint64 {
	ops := make([]*crdt.Op, n)
	for i := range ops {
		ops[i] = &crdt.Op{Origin: c.origin, TS: c.clock.Now(), NS: ns, Kind: crdt.Update}
	}
	c.mu.Lock()
	for _, op := range ops {
		op.Seq = c.first + uint64(len(c.local))
		op.ID = rawString(fmt.Sprintf("d%d", op.Seq))
		op.Update, _ = bson.Marshal(bson.D{{Key: "$set", Value: bson.D{{Key: "n", Value: int64(op.Seq)}}}})
		c.local = append(c.local, op)
		if op.TS.Compare(c.maxTS) > 0 {
			c.maxTS = op.TS
		}
	}
	c.applied[c.origin] = c.first + uint64(len(c.local)) - 1
	last := c.applied[c.origin]
	c.mu.Unlock()
	c.notify()
	return last
}

func (c *Core) notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range c.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Origin implements replica.Replication.
func (c *Core) Origin() string { return c.origin }

// FailApply makes ApplyRemote fail with err (nil: succeed again).
func (c *Core) FailApply(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applyErr = err
}

// SlowApply makes ApplyRemote take d per op, moving the applied position
// op by op as it goes (as the real core marks each document's ops applied
// once written): a slow database.
func (c *Core) SlowApply(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.perOp = d
}

// ApplyRemote applies ops whose seq follows their origin's applied
// position (the receiver sends them in order; others are duplicates).
func (c *Core) ApplyRemote(ctx context.Context, ops []*crdt.Op) error {
	c.mu.Lock()
	perOp := c.perOp
	c.mu.Unlock()
	if perOp > 0 {
		for i := range ops {
			select {
			case <-time.After(perOp):
			case <-ctx.Done():
				return ctx.Err()
			}
			if err := c.applyRemote(ops[i : i+1]); err != nil {
				return err
			}
		}
		return nil
	}
	return c.applyRemote(ops)
}

func (c *Core) applyRemote(ops []*crdt.Op) error {
	for i, op := range ops {
		if op.Origin == "" || op.Seq == 0 {
			return fmt.Errorf("replicatest: remote op %d has no origin/seq", i)
		}
		if err := c.CheckClock(op.TS); err != nil {
			return err
		}
	}
	for _, op := range ops {
		c.clock.Observe(op.TS)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.called("ApplyRemote")
	if c.applyErr != nil {
		return c.applyErr
	}
	for _, op := range ops {
		if op.Seq == c.applied[op.Origin]+1 {
			c.applied[op.Origin] = op.Seq
			c.remote[op.Origin] = append(c.remote[op.Origin], op)
		}
	}
	for _, ch := range c.subs { // as the real core: relays follow applied ops
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return nil
}

// Remote returns the ops of origin applied so far, in order.
func (c *Core) Remote(origin string) []*crdt.Op {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.remote[origin])
}

// CheckClock implements replica.Replication.
func (c *Core) CheckClock(ts crdt.Timestamp) error {
	if ahead := c.clock.Ahead(ts); ahead > c.maxSkew {
		return &replica.ClockSkewError{TS: ts, Ahead: ahead, Max: c.maxSkew}
	}
	return nil
}

// ObserveClock implements replica.Replication.
func (c *Core) ObserveClock(ts crdt.Timestamp) error {
	if ahead, ok := c.clock.ObserveWithin(ts, c.maxSkew); !ok {
		return &replica.ClockSkewError{TS: ts, Ahead: ahead, Max: c.maxSkew}
	}
	return nil
}

// SetApplied sets the position up to which origin's ops are applied (as
// if a snapshot or an earlier run had brought them).
func (c *Core) SetApplied(origin string, seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applied[origin] = seq
}

// Applied implements replica.Replication.
func (c *Core) Applied(origin string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied[origin]
}

// AppliedVector implements replica.Replication.
func (c *Core) AppliedVector() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.applied)
}

// Subscribe implements replica.Replication.
func (c *Core) Subscribe() (<-chan struct{}, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subSeq++
	id := c.subSeq
	ch := make(chan struct{}, 1)
	c.subs[id] = ch
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.subs, id)
	}
}

// ReadOps implements replica.Replication: this origin's ops, or the ops
// of another origin applied here (the fake never trims those).
func (c *Core) ReadOps(origin string, after uint64, maxOps, maxBytes int) ([][]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ops, first := c.local, c.first
	if origin != c.origin {
		ops, first = c.remote[origin], 1
	}
	if after+1 < first {
		return nil, nil
	}
	var out [][]byte
	size := 0
	for i := int(after + 1 - first); i < len(ops) && len(out) < maxOps; i++ {
		raw, err := ops[i].MarshalBSON()
		if err != nil {
			return nil, err
		}
		if len(out) > 0 && size+len(raw) > maxBytes {
			break
		}
		out = append(out, raw)
		size += len(raw)
	}
	return out, nil
}

// LocalOp implements replica.Replication.
func (c *Core) LocalOp(seq uint64) (*crdt.Op, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if seq < c.first || seq >= c.first+uint64(len(c.local)) {
		return nil, nil
	}
	return c.local[seq-c.first], nil
}

// LastSeq implements replica.Replication.
func (c *Core) LastSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.first + uint64(len(c.local)) - 1
}

// FirstSeq implements replica.Replication.
func (c *Core) FirstSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.local) == 0 {
		return 0
	}
	return c.first
}

// PeerAcks implements replica.Replication.
func (c *Core) PeerAcks() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.acks)
}

// SetPeerAck implements replica.Replication.
func (c *Core) SetPeerAck(peer string, seq uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if seq > c.acks[peer] {
		c.acks[peer] = seq
	}
	return nil
}

// RemovePeer implements replica.Replication.
func (c *Core) RemovePeer(peer string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.acks, peer)
	return nil
}

// TrimBelow drops local ops at or below every peer's ack and
// keep[origin] (peers' ops are kept).
func (c *Core) TrimBelow(keep map[string]uint64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	limit, ok := keep[c.origin]
	if !ok {
		limit = math.MaxUint64
	}
	for _, a := range c.acks {
		limit = min(limit, a)
	}
	n := 0
	for len(c.local) > 0 && c.first <= limit {
		c.local = c.local[1:]
		c.first++
		n++
	}
	return n, nil
}

// Frontier implements replica.Replication (no local write is ever in
// progress here).
func (c *Core) Frontier() crdt.Timestamp { return c.clock.Last() }

// MaxTimestamp implements replica.Replication.
func (c *Core) MaxTimestamp() crdt.Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxTS
}

// Fence implements replica.Replication.
func (c *Core) Fence(ctx context.Context, ts crdt.Timestamp) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ts.Compare(c.maxTS) > 0 {
		c.maxTS = ts
	}
	return nil
}

// SetStable implements replica.Replication.
func (c *Core) SetStable(ts crdt.Timestamp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stable = &ts
}

// Stable returns the last compaction frontier given (false: none yet).
func (c *Core) Stable() (crdt.Timestamp, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stable == nil {
		return crdt.Timestamp{}, false
	}
	return *c.stable, true
}

// BlockWrites implements replica.Replication.
func (c *Core) BlockWrites(reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocked = reason
}

// AllowWrites implements replica.Replication.
func (c *Core) AllowWrites() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocked = ""
}

// WritesBlocked implements replica.Replication.
func (c *Core) WritesBlocked() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocked
}

// MarkSynced makes the core's database a synced replica of its op log.
func (c *Core) MarkSynced() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.synced = c.origin
}

// SyncedOrigin implements replica.Replication.
func (c *Core) SyncedOrigin(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.synced, nil
}

// SetItems sets what Snapshot emits.
func (c *Core) SetItems(items []replica.SnapshotItem) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.items = slices.Clone(items)
}

// Loaded returns the items LoadSnapshot stored since the last BeginSync.
func (c *Core) Loaded() []replica.SnapshotItem {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.loaded)
}

// Snapshot implements replica.Replication.
func (c *Core) Snapshot(ctx context.Context, emit func(replica.SnapshotItem) error) error {
	c.mu.Lock()
	items := slices.Clone(c.items)
	c.mu.Unlock()
	for _, it := range items {
		if err := emit(it); err != nil {
			return err
		}
	}
	return nil
}

// BeginSync implements replica.Replication.
func (c *Core) BeginSync(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.called("BeginSync")
	c.synced, c.loaded = "", nil
	return nil
}

// LoadSnapshot stores every item (it knows no namespace it refuses).
func (c *Core) LoadSnapshot(ctx context.Context, items []replica.SnapshotItem) ([]replica.RefusedItem, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loaded = append(c.loaded, items...)
	return nil, nil
}

// FinishSync implements replica.Replication: the applied positions become
// vector (origins missing from it: 0), and the database is synced.
func (c *Core) FinishSync(ctx context.Context, vector map[string]uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.called("FinishSync")
	next := map[string]uint64{}
	for o := range c.applied {
		next[o] = 0
	}
	maps.Copy(next, vector)
	// Its own ops are still in its log, and applied again.
	next[c.origin] = c.first + uint64(len(c.local)) - 1
	c.applied = next
	c.items = slices.Clone(c.loaded)
	c.synced = c.origin
	return nil
}

// ErrApply is a convenient error for FailApply.
var ErrApply = errors.New("replicatest: apply failed")

func rawString(s string) bson.RawValue {
	_, v, _ := bson.MarshalValue(s)
	return bson.RawValue{Type: bson.TypeString, Value: v}
}
