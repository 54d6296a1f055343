package repl

import (
	"errors"
	"sync"
	"time"
)

// sender streams one origin's ops to one peer: this node's own (one sender
// per peer), or, as a relay, a peer's ops this node applied to a peer that
// cannot hear that origin directly (see relay.go). It is a small state machine
// run by its own goroutine (run), woken by the core when local ops are
// logged (its subscription) and fed by the peer's acks and heartbeats
// (onAck, onHeartbeat, from the mesh handler):
//
//	unknown  the peer's position is not known yet (no ack, heartbeat or
//	         persisted position): wait for its heartbeat
//	paused   the peer is not a synced replica (it is syncing): wait
//	idle     the peer has everything (next = acked+1 > last)
//	sending  ops in flight: at most WindowOps beyond acked; when acked does
//	         not move for ResendAfter, rewind to acked+1 and send again
//	held     the peer refused the op after acked, stamped more than its
//	         mongo.max_clock_skew ahead of its wall clock: wait
//	         clockAheadRetry, then send one batch from acked+1, and so on
//	         until the clocks agree (an ack without the flag)
//
// The mesh drops messages when the peer's queue is full and loses those in
// flight when a link breaks; rewinding to the acknowledged position covers
// both, and a duplicate is harmless (the receiver skips what it has).
type sender struct {
	r      *Replicator
	peer   string
	origin string // r.origin, or the relayed origin
	wake   chan struct{}
	done   chan struct{}
	once   sync.Once

	mu          sync.Mutex
	known       bool
	paused      bool
	acked       uint64    // the peer's applied position of origin
	next        uint64    // next seq to send
	progress    time.Time // when acked last moved, or sending started from it
	hbPos       uint64    // the position its latest heartbeat announced
	rewound     uint64    // position of the last rewind on a gap ack
	rewoundAt   time.Time
	persisted   uint64
	tooLargeLog time.Time
	holdUntil   time.Time // held: send nothing before (see ackClockAhead)
	probe       bool      // after a hold: one batch at a time until an ack without ackClockAhead
}

// catchUpWindows is how many WindowOps a sender keeps in flight to a peer
// that is more than one window behind, and how many the receiver merges
// into one apply (maxApplyOps). A catch-up applies each document's ops of
// one apply with one read and one write, so the wider the apply, the fewer
// writes per op: 8,192 updates spread over 10,000 documents touch 5,600 of
// them (1.5 ops per write), 65,536 touch nearly all of them once (6.5).
// The peer's heartbeats, which carry its applied position as the core
// moves it document by document, keep the sender from taking the long
// apply for a loss.
const catchUpWindows = 8

// lastSeq is the newest op this sender may send.
func (s *sender) lastSeq() uint64 {
	if s.relay() {
		// What this node vouches for: applied here, so in its log.
		return s.r.core.Applied(s.origin)
	}
	return s.r.core.LastSeq()
}

// clockAheadRetry is how long a sender waits after a peer refused its ops
// for a clock running ahead, in units of ResendAfter.
const clockAheadRetry = 5

func newSender(r *Replicator, peer string) *sender {
	s := &sender{r: r, peer: peer, origin: r.origin, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if a, ok := r.core.PeerAcks()[peer]; ok {
		s.known, s.acked, s.persisted, s.hbPos = true, a, a, a
	}
	s.next = s.acked + 1
	return s
}

// newRelay returns a sender of origin's ops to peer, which has applied
// them up to pos (its heartbeat said so).
func newRelay(r *Replicator, peer, origin string, pos uint64) *sender {
	return &sender{r: r, peer: peer, origin: origin, wake: make(chan struct{}, 1), done: make(chan struct{}),
		known: true, acked: pos, next: pos + 1, hbPos: pos, progress: time.Now()}
}

func (s *sender) relay() bool { return s.origin != s.r.origin }

func (s *sender) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *sender) stop() { s.once.Do(func() { close(s.done) }) }

func (s *sender) onAck(pos uint64, flags byte) {
	now := time.Now()
	s.mu.Lock()
	switch {
	case flags&ackNotReady != 0:
		s.paused = true
	case flags&ackClockAhead != 0:
		// Applied up to pos, refused from pos+1: send from there again,
		// later, one batch at a time.
		s.paused, s.known = false, true
		if pos > s.acked {
			s.acked = pos
		}
		s.next, s.progress = s.acked+1, now
		s.holdUntil, s.probe = now.Add(clockAheadRetry*s.r.opts.ResendAfter), true
	case flags&ackGap != 0:
		s.paused, s.known = false, true
		if pos != s.acked {
			s.acked, s.progress = pos, now
		}
		// Several batches in flight beyond a lost one each report the gap:
		// rewind once per position.
		if s.next > pos+1 && (s.rewound != pos || now.Sub(s.rewoundAt) > s.r.opts.ResendAfter/2) {
			s.next, s.rewound, s.rewoundAt = pos+1, pos, now
			s.r.met.resends.WithLabelValues(s.peer).Inc()
		}
	default:
		s.paused, s.known, s.probe = false, true, false
		if pos > s.acked {
			s.acked, s.progress = pos, now
		}
		if s.next <= pos {
			s.next = pos + 1
		}
	}
	s.mu.Unlock()
	s.poke()
}

func (s *sender) onHeartbeat(pos uint64, flags byte) {
	s.mu.Lock()
	if flags&hbSynced == 0 || flags&hbSyncing != 0 {
		s.paused = true
		s.mu.Unlock()
		return
	}
	wake := s.paused || !s.known
	s.paused = false
	s.hbPos = pos
	if !s.known {
		s.known, s.acked, s.next, s.progress = true, pos, pos+1, time.Now()
	} else if pos > s.acked {
		// Heartbeats travel on the same ordered stream as acks, so this is
		// progress whose ack was lost or is still to come.
		s.acked, s.progress = pos, time.Now()
		if s.next <= pos {
			s.next = pos + 1
		}
		wake = true
	}
	s.mu.Unlock()
	if wake {
		s.poke()
	}
}

func (s *sender) run() {
	defer s.r.wg.Done()
	local, unsubscribe := s.r.core.Subscribe()
	defer unsubscribe()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		wait := s.step()
		timer.Reset(wait)
		select {
		case <-s.done:
			return
		case <-s.r.ctx.Done():
			return
		case <-s.wake:
			if !timer.Stop() {
				<-timer.C
			}
		case <-local:
			if !timer.Stop() {
				<-timer.C
			}
		case <-timer.C:
		}
	}
}

// step sends what the window allows and says when to look again.
func (s *sender) step() time.Duration {
	r := s.r
	o := &r.opts
	now := time.Now()
	last := s.lastSeq() // before s.mu: the core's locks are not taken under it
	s.mu.Lock()
	if !s.known || s.paused {
		s.mu.Unlock()
		return time.Second
	}
	if now.Before(s.holdUntil) {
		s.mu.Unlock()
		return s.holdUntil.Sub(now)
	}
	switch {
	case s.next > s.acked+1 && now.Sub(s.progress) > o.ResendAfter:
		// Nothing acknowledged for a while: whatever was in flight is lost.
		s.next, s.progress = s.acked+1, now
		r.met.resends.WithLabelValues(s.peer).Inc()
	case s.hbPos < s.acked && s.next == s.acked+1 && now.Sub(s.progress) > o.ResendAfter:
		// The peer's position went back (it was resynced from a peer that
		// had less of our ops): stream again from there.
		s.acked, s.next, s.progress = s.hbPos, s.hbPos+1, now
	}
	start, acked := s.next, s.acked
	if start == acked+1 {
		s.progress = now // the ack timer starts with the first op in flight
	}
	window := o.WindowOps
	if s.probe {
		window = min(window, o.BatchOps)
	} else if last > acked && last-acked > uint64(window) {
		// Far behind (back from a partition): a wider window lets the
		// peer merge more of the backlog into one apply, which folds
		// each document's ops into one write (see catchUpWindows).
		window = int(min(last-acked, uint64(catchUpWindows*o.WindowOps)))
	}
	s.mu.Unlock()

	next, wait := s.send(start, acked, window)
	s.mu.Lock()
	if s.next == start { // no rewind meanwhile
		s.next = next
	}
	if s.next > s.acked+1 && wait > o.ResendAfter {
		wait = o.ResendAfter
	}
	s.mu.Unlock()
	return wait
}

// send sends origin's ops from start, as far as the window beyond acked
// allows, in batches. It returns the next seq to send and when to look
// again.
func (s *sender) send(start, acked uint64, window int) (next uint64, wait time.Duration) {
	r := s.r
	o := &r.opts
	last := s.lastSeq()
	next = start
	wait = 5 * time.Second
	for next <= last && next-1-acked < uint64(window) {
		room := window - int(next-1-acked)
		raws, err := r.core.ReadOps(s.origin, next-1, min(o.BatchOps, room), o.BatchBytes)
		if err != nil {
			if r.ctx.Err() == nil {
				r.log.Warn("reading the op log to send", "peer", s.peer, "err", err)
			}
			wait = time.Second
			break
		}
		if len(raws) == 0 {
			// Trimmed below the peer's position: its heartbeat check sees our
			// first seq and resyncs (a relay: another relay, or the origin,
			// may still have them).
			wait = o.ResendAfter
			break
		}
		msg := (&opsMsg{origin: s.origin, prev: next - 1, ops: raws}).encode()
		if err := o.Transport.Send(s.peer, Topic, msg); err != nil {
			switch {
			case errors.Is(err, ErrQueueFull):
				wait = 50 * time.Millisecond
			case errors.Is(err, ErrTooLarge):
				if time.Since(s.tooLargeLog) > time.Minute {
					s.tooLargeLog = time.Now()
					r.log.Error("an op is larger than the mesh's maximum message size and cannot be replicated; raise it or keep documents smaller", "peer", s.peer, "seq", next, "bytes", len(msg))
				}
				r.met.tooLarge.Inc()
				wait = 10 * time.Second
			default:
				wait = time.Second // not connected, or gone
			}
			break
		}
		next += uint64(len(raws))
		if s.relay() {
			r.met.opsRelayed.WithLabelValues(s.peer).Add(float64(len(raws)))
		} else {
			r.met.opsSent.WithLabelValues(s.peer).Add(float64(len(raws)))
		}
		wait = o.ResendAfter
	}
	return next, wait
}

// persistAck durably records the peer's position in this node's ops (op
// log trimming and restarts use it) if it moved. Relays keep nothing.
func (s *sender) persistAck() error {
	if s.relay() {
		return nil
	}
	s.mu.Lock()
	acked, persisted := s.acked, s.persisted
	s.mu.Unlock()
	if acked <= persisted {
		return nil
	}
	if err := s.r.core.SetPeerAck(s.peer, acked); err != nil {
		return err
	}
	s.mu.Lock()
	if acked > s.persisted {
		s.persisted = acked
	}
	s.mu.Unlock()
	return nil
}

// position returns the peer's acknowledged position and whether it is known.
func (s *sender) position() (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked, s.known
}
