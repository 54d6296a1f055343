package pubsub

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Websocket writers.
//
// A goroutine per delivery (started when a frame is queued to an idle
// connection, ending when its queue is empty) cost a goroutine start, two
// scheduler hand-offs and its exit for every frame of a fan-out: about 15%
// of the server's CPU per delivery at 10,000 subscribers. Instead, each
// connection belongs to one of a few writer shards (one per CPU); a
// connection with frames queued is put once on its shard's ready list, and
// the shard's worker goroutine walks the list, writing each connection's
// whole queue in one write. A fan-out to 10,000 subscribers thus wakes at
// most one goroutine per shard.
//
// A write blocks only when the client's socket buffer is full (a slow or
// stalled client). The worker must not hold up the rest of its list behind
// such a write: a watchdog retires a worker whose current write has lasted
// stallAfter, and starts a fresh worker for the shard, which takes over
// the list. The retired worker finishes that one write (it ends when the
// client reads, or when the sweeper cuts the connection after
// WriteTimeout), hands back what it had not done yet, and exits. So a
// stalled client costs a goroutine while it stalls, as before, and delays
// the others of its shard by at most stallAfter plus a watchdog tick.
//
// Shard worker states: idle (waiting for wake) -> writing (walking the
// ready list) -> idle; or writing -> retired (a newer worker owns the
// shard) -> gone. The watchdog: asleep (no worker writing) -> watching
// (ticks every watchTick while some worker writes) -> asleep.

const (
	stallAfter = 20 * time.Millisecond
	watchTick  = 10 * time.Millisecond
)

type writerPool struct {
	p      *PubSub
	shards []*writerShard
	busy   chan struct{} // a worker began writing: the watchdog watches
}

type writerShard struct {
	pool *writerPool

	mu    sync.Mutex
	ready []*conn // connections with frames queued (their writing is set), from head on
	head  int
	cur   *writer // the shard's worker; older ones are retired
	idle  bool    // cur waits on wake
	wake  chan struct{}
}

// writer is one worker goroutine of a shard.
type writer struct {
	shard *writerShard
	// since is when the current write began (unix nanoseconds); 0: not
	// writing.
	since atomic.Int64
}

func newWriterPool(p *PubSub) *writerPool {
	wp := &writerPool{p: p, busy: make(chan struct{}, 1)}
	n := max(1, runtime.GOMAXPROCS(0))
	for range n {
		s := &writerShard{pool: wp, wake: make(chan struct{}, 1)}
		wp.shards = append(wp.shards, s)
	}
	return wp
}

// start launches the workers and the watchdog, owned by p.wg and p.bg.
func (wp *writerPool) start() {
	for _, s := range wp.shards {
		s.mu.Lock()
		s.startLocked()
		s.mu.Unlock()
	}
	wp.p.bg.Add(1)
	go wp.watch()
}

// startLocked makes a new worker the shard's own.
func (s *writerShard) startLocked() {
	w := &writer{shard: s}
	s.cur = w
	s.idle = false
	s.pool.p.wg.Add(1)
	go w.run()
}

func (wp *writerPool) shard(c *conn) *writerShard {
	return wp.shards[c.id%uint64(len(wp.shards))]
}

// schedule puts c on its shard's ready list. The caller has set
// c.writing (under c.mu), so c is on at most one list at a time.
func (wp *writerPool) schedule(c *conn) {
	s := wp.shard(c)
	s.mu.Lock()
	s.ready = append(s.ready, c)
	wake := s.idle
	s.idle = false
	s.mu.Unlock()
	if wake {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// run is a worker: it writes every ready connection's queue, taking them
// from the list one at a time (so that a newer worker can take over the
// rest at any moment), until the package stops or a newer worker owns the
// shard.
func (w *writer) run() {
	s := w.shard
	p := s.pool.p
	defer p.wg.Done()
	var c *conn
	more := false
	for {
		s.mu.Lock()
		if more {
			s.ready = append(s.ready, c) // after the others: fair
		}
		if s.cur != w {
			// Retired: c (if any) is handed to the shard's new worker.
			wake := more && s.idle
			s.idle = s.idle && !wake
			s.mu.Unlock()
			if wake {
				select {
				case s.wake <- struct{}{}:
				default:
				}
			}
			return
		}
		if s.head == len(s.ready) {
			clear(s.ready)
			s.ready, s.head = s.ready[:0], 0
			s.idle = true
			s.mu.Unlock()
			select {
			case <-s.wake:
				select {
				case s.pool.busy <- struct{}{}:
				default:
				}
				more = false
				continue
			case <-p.stop:
				// Close terminates every connection next; nothing
				// queued needs writing any more.
				return
			}
		}
		c = s.ready[s.head]
		s.ready[s.head] = nil
		s.head++
		if s.head > 1024 && s.head*2 > len(s.ready) {
			// Always busy: drop the list's done part now and then.
			k := copy(s.ready, s.ready[s.head:])
			clear(s.ready[k:])
			s.ready, s.head = s.ready[:k], 0
		}
		s.mu.Unlock()
		more = c.writePass(w)
	}
}

// watch retires workers stuck in one write for stallAfter. It ticks only
// while some worker is not idle: a worker leaving idle signals busy, so the
// watchdog cannot be asleep while a worker writes.
func (wp *writerPool) watch() {
	p := wp.p
	defer p.bg.Done()
	t := time.NewTimer(watchTick)
	t.Stop()
	for {
		// Asleep until a worker begins writing.
		select {
		case <-p.stop:
			return
		case <-wp.busy:
		}
		// Watching.
		for {
			t.Reset(watchTick)
			select {
			case <-p.stop:
				t.Stop()
				return
			case <-t.C:
			}
			now := time.Now().UnixNano()
			writing := false
			for _, s := range wp.shards {
				s.mu.Lock()
				w := s.cur
				since := w.since.Load()
				if since != 0 {
					writing = true
					if now-since > int64(stallAfter) {
						p.met.writerStalls.Inc()
						s.startLocked()
					}
				} else if !s.idle {
					writing = true // between two writes
				}
				s.mu.Unlock()
			}
			if !writing {
				break
			}
		}
	}
}
