package repl

import (
	"fmt"
	"time"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// receiver applies one origin's ops, in order, on its own goroutine: the
// mesh handler only decodes and queues. Batches that do not follow the
// applied position are answered with a gap ack (the sender rewinds); the
// queue is bounded, and a batch that does not fit is dropped (the sender's
// window keeps this rare, its resend covers it).
type receiver struct {
	r      *Replicator
	origin string
	q      chan inbound

	nackPos uint64
	nackAt  time.Time
	errLog  time.Time
	lateLog time.Time
}

type inbound struct {
	from string
	prev uint64
	ops  []*crdt.Op
}

// maxReceivers bounds the origins whose ops this node applies (one
// goroutine each): origins are nodes and their incarnations, and a peer
// with a node certificate could otherwise invent them without end.
const maxReceivers = 4096

// route is who last delivered an origin's ops, and when.
type route struct {
	from string
	at   time.Time
}

// maxApplyOps bounds the ops applied in one call (consecutive batches are
// merged: ops of one document fold into one write): a catch-up window of a
// sender with the default options (catchUpWindows × 8,192), 128 batches of
// 512 ops, which the queue (256 batches) holds.
const maxApplyOps = catchUpWindows * 8192

func (r *Replicator) onOps(from string, msg []byte) {
	origin, prev, ops, err := decodeOps(msg)
	if err != nil {
		r.bad(from, "ops", err)
		return
	}
	// Any peer may deliver any origin's ops (relay.go), except this
	// node's own current ones: it is their only source.
	if origin == "" || origin == r.origin {
		r.bad(from, "ops", errMalformed)
		return
	}
	if !r.isSynced() {
		r.sendAck(from, origin, r.core.Applied(origin), ackNotReady)
		return
	}
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		return
	}
	r.routes[origin] = route{from: from, at: time.Now()}
	rc := r.receivers[origin]
	if rc == nil && len(r.receivers) >= maxReceivers {
		r.mu.Unlock()
		r.bad(from, "ops", fmt.Errorf("ops of a new origin %q beyond %d origins", origin, maxReceivers))
		return
	}
	if rc == nil {
		rc = &receiver{r: r, origin: origin, q: make(chan inbound, 256)}
		r.receivers[origin] = rc
		r.wg.Add(1)
		go rc.run()
	}
	r.mu.Unlock()
	select {
	case rc.q <- inbound{from: from, prev: prev, ops: ops}:
	default:
		r.met.dropped.Inc()
	}
}

func (r *Replicator) sendAck(to, origin string, pos uint64, flags byte) {
	_ = r.opts.Transport.Send(to, Topic, (&ackMsg{origin: origin, pos: pos, flags: flags}).encode())
}

func (rc *receiver) run() {
	r := rc.r
	defer r.wg.Done()
	for {
		var first inbound
		select {
		case <-r.ctx.Done():
			return
		case first = <-rc.q:
		}
		batch := []inbound{first}
		n := len(first.ops)
	drain:
		for n < maxApplyOps {
			select {
			case b := <-rc.q:
				batch = append(batch, b)
				n += len(b.ops)
			default:
				break drain
			}
		}
		rc.apply(batch)
	}
}

func (rc *receiver) apply(batch []inbound) {
	r := rc.r
	r.applyGate.RLock()
	from := batch[len(batch)-1].from
	if !r.isSynced() {
		r.applyGate.RUnlock()
		r.sendAck(from, rc.origin, r.core.Applied(rc.origin), ackNotReady)
		return
	}
	applied := r.core.Applied(rc.origin)
	expect := applied
	var ops []*crdt.Op
	gap := false
	for _, b := range batch {
		if b.prev > expect {
			gap = true // lost in between; what follows cannot be applied yet
			break
		}
		for _, op := range b.ops {
			if op.Seq == expect+1 {
				ops = append(ops, op)
				expect = op.Seq
			}
		}
	}
	// Ops stamped more than max_clock_skew ahead of this node's wall clock
	// are refused, and the ones after them with them (positions are
	// per-origin sequences): the origin keeps them in its log and sends
	// them again later; they apply once the clocks agree.
	var skewErr error
	skewed := 0
	for i, op := range ops {
		if err := r.core.CheckClock(op.TS); err != nil {
			skewErr, skewed = err, len(ops)-i
			ops = ops[:i]
			break
		}
	}
	if len(ops) > 0 {
		rc.checkLate(ops)
		start := time.Now()
		err := r.core.ApplyRemote(r.ctx, ops)
		if err != nil && r.ctx.Err() == nil {
			if time.Since(rc.errLog) > 10*time.Second {
				rc.errLog = time.Now()
				r.log.Warn("applying a peer's ops failed; they are retried", "origin", rc.origin, "ops", len(ops), "err", err)
			}
			r.met.applyErrors.Inc()
		}
		now := time.Now()
		r.met.applySeconds.Observe(now.Sub(start).Seconds())
		hist := r.met.delay.WithLabelValues(NodeOf(rc.origin))
		for _, op := range ops {
			hist.Observe(float64(now.UnixMilli()-op.TS.Wall) / 1000)
		}
		r.met.opsApplied.WithLabelValues(NodeOf(rc.origin)).Add(float64(len(ops)))
	}
	r.applyGate.RUnlock()
	pos := r.core.Applied(rc.origin)
	r.noteApplied(NodeOf(rc.origin), rc.origin, pos)
	var flags byte
	if skewErr != nil {
		r.clockRefused(from, "ops", skewed, skewErr)
		r.sendAck(from, rc.origin, pos, ackClockAhead)
		return
	}
	if gap {
		now := time.Now()
		if rc.nackPos == pos && now.Sub(rc.nackAt) < r.opts.ResendAfter/2 {
			return // this gap was reported already
		}
		rc.nackPos, rc.nackAt = pos, now
		flags = ackGap
		r.met.gaps.Inc()
	}
	r.sendAck(from, rc.origin, pos, flags)
}

// checkLate counts ops that arrive below the compaction frontier this node
// has already used: documents compacted there ignore them as duplicates.
// It cannot happen for ops of nodes this node knew about (the frontier
// waits for them); it means a node unknown here wrote with a clock behind
// the others by more than StableMargin.
func (rc *receiver) checkLate(ops []*crdt.Op) {
	ms := *rc.r.maxStable.Load()
	late := 0
	for _, op := range ops {
		if op.TS.Compare(ms) <= 0 {
			late++
		}
	}
	if late == 0 {
		return
	}
	rc.r.met.lateOps.Add(float64(late))
	if time.Since(rc.lateLog) > 10*time.Second {
		rc.lateLog = time.Now()
		rc.r.log.Error("ops arrived below the compaction frontier: documents compacted since may ignore them (clock skew beyond the stable margin?)",
			"origin", rc.origin, "ops", late, "frontier", ms.String())
	}
}

// noteApplied moves the origin's safe frontier and lag state after an apply.
func (r *Replicator) noteApplied(node, origin string, pos uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodes[node]
	if n == nil || n.origin != origin {
		return
	}
	n.hbs.advance(pos)
	if pos >= n.last {
		n.behind = time.Time{}
	}
}
