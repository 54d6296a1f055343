package cdn

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A fill is the one origin GET for a key (a miss, or the conditional GET
// that revalidates an entry), shared by every request that wants the key
// meanwhile. Its states:
//
//	waiting ──▶ streaming ──▶ complete      bytes verified (committed unless purged)
//	   │            └───────▶ failed        origin/disk error, short or corrupt body
//	   ├──▶ notModified   (revalidation: the entry is fresh again)
//	   ├──▶ notFound      (remembered for NegativeTTL)
//	   ├──▶ failed        (origin error or timeout before any byte)
//	   └──▶ bypass        (too big, or no disk: each request goes to the origin)
//
// Readers pread the download file up to `written`, and block on notify for
// more. The object's last byte is released only once the whole body is
// verified, so no client can receive a complete copy of a bad download.
type fill struct {
	c   *Cache
	key string
	old *entry // the entry being revalidated; nil on a miss

	purged bool      // guarded by Cache.mu: Purge ran; never commit
	noPeer bool      // fill from the origin: a peer asked, or a revalidation
	begun  time.Time // when the origin GET began: the copy is as of then or later

	mu       sync.Mutex
	state    fillState
	notify   chan struct{} // closed and replaced on every change
	err      error
	diskErr  bool // failed because of the local disk: readers resume from the origin
	hdr      objHeaders
	h        *handle // download file; nil once the fill is over
	size     int64
	written  int64
	verified bool
}

type fillState int

const (
	fillWaiting fillState = iota
	fillStreaming
	fillComplete
	fillFailed
	fillNotModified
	fillNotFound
	fillBypass
)

// newFillLocked registers and starts a fill (under c.mu).
func (c *Cache) newFillLocked(key string, old *entry, noPeer bool) *fill {
	f := &fill{c: c, key: key, old: old, noPeer: noPeer, notify: make(chan struct{}), begun: time.Now()}
	c.fills[key] = f
	c.wg.Add(1)
	c.running.Add(1)
	go c.runFill(f)
	return f
}

// changedLocked wakes the readers (under f.mu).
func (f *fill) changedLocked() {
	close(f.notify)
	f.notify = make(chan struct{})
}

// fillView is what a request sees of a fill once the origin answered.
type fillView struct {
	state   fillState
	h       *handle // a reference to the download file, or nil
	err     error
	diskErr bool
}

// waitHeaders blocks until the origin answered, the fill ended, or ctx is
// done (ok false). From streaming on, the view holds a reference to the
// download file, which the caller releases; it is nil when the fill is
// already over and its file belongs to the index now.
func (f *fill) waitHeaders(ctx context.Context) (v fillView, ok bool) {
	for {
		f.mu.Lock()
		st, ch := f.state, f.notify
		if st != fillWaiting {
			if f.h != nil {
				f.h.acquire()
			}
			v = fillView{state: st, h: f.h, err: f.err, diskErr: f.diskErr}
			f.mu.Unlock()
			return v, true
		}
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return v, false
		}
	}
}

// errFillFailed wraps why a download failed, for readers.
type errFillFailed struct {
	err     error
	diskErr bool
}

func (e *errFillFailed) Error() string { return "download failed: " + e.err.Error() }
func (e *errFillFailed) Unwrap() error { return e.err }

// readAt reads the download file at off, waiting for the bytes to arrive.
func (f *fill) readAt(ctx context.Context, h *handle, p []byte, off int64) (int, error) {
	for {
		f.mu.Lock()
		avail := f.written
		if !f.verified && avail == f.size && avail > 0 {
			avail-- // the last byte waits for verification
		}
		st, ch, err, diskErr := f.state, f.notify, f.err, f.diskErr
		f.mu.Unlock()
		if off < avail {
			n := int(min(int64(len(p)), avail-off))
			return h.f.ReadAt(p[:n], off)
		}
		if off >= f.size {
			return 0, io.EOF
		}
		if st == fillFailed {
			return 0, &errFillFailed{err: err, diskErr: diskErr}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// finish moves the fill to a terminal state and takes it out of the
// coalescing map, so the next request starts afresh (or finds the entry).
func (c *Cache) finish(f *fill, st fillState, err error, diskErr bool) {
	c.mu.Lock()
	if c.fills[f.key] == f {
		delete(c.fills, f.key)
	}
	c.mu.Unlock()
	f.mu.Lock()
	f.state, f.err, f.diskErr = st, err, diskErr
	f.verified = st == fillComplete
	h := f.h
	f.h = nil
	f.changedLocked()
	f.mu.Unlock()
	if h != nil {
		h.release()
	}
}

// stallTimer cancels a transfer when the origin stays silent for longer
// than the timeout; every read that brings bytes re-arms it.
type stallTimer struct {
	t       *time.Timer
	d       time.Duration
	expired atomic.Bool
}

func newStallTimer(d time.Duration, cancel context.CancelFunc) *stallTimer {
	s := &stallTimer{d: d}
	s.t = time.AfterFunc(d, func() { s.expired.Store(true); cancel() })
	return s
}

func (s *stallTimer) poke()       { s.t.Reset(s.d) }
func (s *stallTimer) stop()       { s.t.Stop() }
func (s *stallTimer) fired() bool { return s.expired.Load() }

var errOriginTimeout = errors.New("origin timed out")

// runFill is the fill's goroutine (owned by c.wg; stops with c.ctx).
func (c *Cache) runFill(f *fill) {
	defer c.wg.Done()
	defer c.running.Add(-1)
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	stall := newStallTimer(c.opts.OriginTimeout, cancel)
	defer stall.stop()

	req := OriginRequest{Key: f.key}
	if f.old != nil {
		if f.old.etag != "" {
			req.IfNoneMatch = f.old.etag
		} else {
			req.IfModifiedSince = f.old.lastMod
		}
	}
	start := time.Now()
	obj, fromPeer, err := c.fetchMiss(ctx, f, req, stall)
	if !fromPeer {
		c.m.originDuration.Observe(time.Since(start).Seconds())
	}
	if err != nil {
		if stall.fired() {
			err = fmt.Errorf("%w after %v: %w", errOriginTimeout, c.opts.OriginTimeout, err)
		}
		c.originAnswered(f, err)
		return
	}
	defer obj.Body.Close()
	peerBad := func(reason string) string { return reason }
	if fromPeer {
		// A peer's copy is as old as its own download: a purge that reaches
		// this node later must still drop it.
		c.mu.Lock()
		if !obj.FetchedAt.IsZero() && obj.FetchedAt.Before(f.begun) {
			f.begun = obj.FetchedAt
		}
		c.mu.Unlock()
		peerBad = func(reason string) string { c.peerRefused(f.key, peerCorrupt); return "peer_" + reason }
	} else {
		c.m.originOK.Inc()
	}

	size := obj.Size
	if obj.Offset != 0 {
		c.fail(f, fmt.Errorf("origin sent a range from %d when the whole object was asked for", obj.Offset), "origin", false)
		return
	}
	if size < 0 || size > c.opts.MaxObjectBytes {
		// Not cacheable: remembered for a TTL so later requests go straight
		// to the origin instead of opening a fill first.
		now := time.Now()
		c.mu.Lock()
		c.tooBig.Add(f.key, now.Add(c.opts.TTL))
		c.mu.Unlock()
		c.m.fillFailures.WithLabelValues("too_big").Inc()
		c.finish(f, fillBypass, nil, false)
		return
	}

	// Make room first, so the budget holds while the bytes arrive.
	c.mu.Lock()
	if time.Now().UnixNano() < c.noDisk || c.closed {
		c.mu.Unlock()
		c.finish(f, fillBypass, nil, false)
		return
	}
	c.evictLocked(size)
	if c.bytes+c.reserved+size > c.opts.MaxBytes {
		// Other downloads hold the rest of the budget: this one passes
		// through rather than overshoot it.
		victims := c.takeVictimsLocked()
		c.updateGaugesLocked()
		c.mu.Unlock()
		c.deleteFiles(victims)
		c.m.fillFailures.WithLabelValues("no_room").Inc()
		c.finish(f, fillBypass, nil, false)
		return
	}
	c.reserved += size
	victims := c.takeVictimsLocked()
	c.updateGaugesLocked()
	c.mu.Unlock()
	c.deleteFiles(victims)
	res := &reservation{size: size}
	defer func() {
		c.mu.Lock()
		c.unreserveLocked(res)
		c.mu.Unlock()
	}()

	tmp, err := c.store.createTemp()
	if err != nil {
		c.diskTrouble(err)
		c.m.fillFailures.WithLabelValues("disk").Inc()
		c.finish(f, fillBypass, nil, false)
		return
	}
	f.mu.Lock()
	f.h = newHandle(tmp)
	f.size = size
	f.hdr = newObjHeaders(size, obj.ETag, obj.LastModified, obj.ContentType)
	f.state = fillStreaming
	f.changedLocked()
	f.mu.Unlock()
	removeTmp := func() { os.Remove(tmp.Name()) }

	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	buf := *bp
	sum := md5.New()
	var written int64
	for written < size {
		n, rerr := obj.Body.Read(buf[:min(int64(len(buf)), size-written)])
		if n > 0 {
			stall.poke()
			if _, werr := tmp.Write(buf[:n]); werr != nil {
				c.diskTrouble(werr)
				removeTmp()
				c.fail(f, fmt.Errorf("writing the download: %w", werr), "disk", true)
				return
			}
			sum.Write(buf[:n])
			written += int64(n)
			f.mu.Lock()
			f.written = written
			f.changedLocked()
			f.mu.Unlock()
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if stall.fired() {
				rerr = fmt.Errorf("%w after %v: %w", errOriginTimeout, c.opts.OriginTimeout, rerr)
			}
			removeTmp()
			c.fail(f, fmt.Errorf("reading from the origin after %d of %d bytes: %w", written, size, rerr), peerBad("origin"), false)
			return
		}
	}
	if written != size {
		removeTmp()
		c.fail(f, fmt.Errorf("origin sent %d of %d bytes", written, size), peerBad("short"), false)
		return
	}
	digest := sum.Sum(nil)
	if obj.MD5 != nil && !bytes.Equal(obj.MD5, digest) {
		removeTmp()
		c.fail(f, fmt.Errorf("MD5 %x does not match the origin's %x", digest, obj.MD5), peerBad("checksum"), false)
		return
	}
	if fromPeer {
		c.m.peerFills.WithLabelValues(peerOK).Inc()
	}
	c.commit(f, tmp, obj, digest, res)
}

// reservation is space promised to a fill, given back exactly once (under
// Cache.mu).
type reservation struct {
	size int64
	done bool
}

func (c *Cache) unreserveLocked(r *reservation) {
	if !r.done {
		r.done = true
		c.reserved -= r.size
	}
}

// commit turns a verified download into an entry. The entry is indexed
// before the waiting clients get their last byte, so whoever finished
// reading finds a hit; durability (fsync, .meta) follows, and if it fails
// the entry is dropped again.
func (c *Cache) commit(f *fill, tmp *os.File, obj *Object, digest []byte, res *reservation) {
	now := time.Now()
	m := objMeta{
		Key: f.key, Gen: c.store.gen.Add(1), Size: f.size, ETag: obj.ETag, LastModified: obj.LastModified,
		ContentType: obj.ContentType, MD5: hex.EncodeToString(digest), FetchedAt: f.begun, ValidatedAt: now,
	}
	dataPath, metaPath, err := c.store.place(tmp, &m)
	if err != nil {
		os.Remove(tmp.Name())
		c.diskTrouble(err)
		c.log.Warn("cache commit failed; object served but not cached", "key", f.key, "err", err)
		c.m.fillFailures.WithLabelValues("disk").Inc()
		c.finish(f, fillComplete, nil, false) // the bytes are complete and verified: readers finish
		return
	}
	e := entryFromMeta(&m)
	e.dataPath = dataPath
	e.buildHeaders()

	f.mu.Lock()
	h := f.h
	h.acquire() // the index's reference
	f.mu.Unlock()

	c.mu.Lock()
	c.unreserveLocked(res)
	if c.fills[f.key] == f {
		delete(c.fills, f.key)
	}
	discard := f.purged || c.closed
	if !discard {
		c.idx.Remove(f.key) // the version being replaced, if any
		if c.idx.Len() >= c.opts.MaxEntries {
			c.idx.RemoveOldest()
			c.m.evictions.Inc()
		}
		c.idx.Add(f.key, e)
		c.bytes += e.size
		e.h = h
		c.open.Add(e, struct{}{})
		c.evictLocked(0)
	}
	victims := c.takeVictimsLocked()
	c.updateGaugesLocked()
	c.mu.Unlock()
	c.finish(f, fillComplete, nil, false)
	c.deleteFiles(victims)
	if discard {
		h.release()
		os.Remove(dataPath)
		return
	}

	err = c.store.persist(h.f, metaPath, &m)
	c.mu.Lock()
	gone := e.removed
	if err != nil && !gone {
		c.idx.Remove(f.key)
		gone = true
	}
	victims = c.takeVictimsLocked()
	c.updateGaugesLocked()
	c.mu.Unlock()
	if err != nil {
		c.diskTrouble(err)
		c.log.Warn("cache commit failed; entry dropped", "key", f.key, "err", err)
		c.m.fillFailures.WithLabelValues("disk").Inc()
	}
	c.deleteFiles(victims)
	if gone {
		// Evicted or purged while being persisted: make sure no .meta
		// written after that removal survives.
		_ = c.store.remove(e)
	}
}

// originAnswered handles an origin answer without a body.
func (c *Cache) originAnswered(f *fill, err error) {
	switch {
	case errors.Is(err, ErrNotModified) && f.old != nil:
		c.m.originNotModified.Inc()
		now := time.Now()
		c.mu.Lock()
		f.old.validated = now.UnixNano()
		f.old.failedUntil = 0
		c.mu.Unlock()
		if terr := c.store.touch(f.old, now); terr != nil {
			c.log.Warn("recording a revalidation", "key", f.key, "err", terr)
		}
		c.finish(f, fillNotModified, nil, false)
	case errors.Is(err, ErrNotFound):
		c.m.originNotFound.Inc()
		c.mu.Lock()
		if !f.purged && c.opts.NegativeTTL > 0 {
			c.negative.Add(f.key, time.Now().Add(c.opts.NegativeTTL))
		}
		if cur, ok := c.idx.Peek(f.key); ok && cur == f.old {
			c.idx.Remove(f.key) // deleted at the origin
		}
		victims := c.takeVictimsLocked()
		c.updateGaugesLocked()
		c.mu.Unlock()
		c.deleteFiles(victims)
		c.finish(f, fillNotFound, nil, false)
	default:
		if errors.Is(err, errOriginTimeout) {
			c.m.originTimeout.Inc()
		} else {
			c.m.originError.Inc()
		}
		c.fail(f, err, "origin", false)
	}
}

// fail ends a fill in error. A failed revalidation holds further ones off
// for a while, so a down origin is not asked again by every request (they
// get the stale copy at once meanwhile).
func (c *Cache) fail(f *fill, err error, reason string, diskErr bool) {
	c.m.fillFailures.WithLabelValues(reason).Inc()
	// Logged here, not by the requests: a download that fails before any
	// waiting request has started its answer is seen by them only as a 502.
	c.log.Warn("fill failed", "key", f.key, "reason", reason, "revalidation", f.old != nil, "err", err)
	if f.old != nil {
		c.mu.Lock()
		f.old.failedUntil = time.Now().Add(c.retryAfterError()).UnixNano()
		c.mu.Unlock()
	}
	if c.ctx.Err() != nil {
		err = fmt.Errorf("cache closing: %w", err)
	}
	c.finish(f, fillFailed, err, diskErr)
}

// retryAfterError is how long a failed origin is not asked again for an
// entry that has a copy.
func (c *Cache) retryAfterError() time.Duration {
	return min(max(c.opts.OriginTimeout, time.Second), c.opts.TTL)
}

// diskTrouble reacts to a local disk error: when the disk is full, misses
// pass through for a while instead of failing.
func (c *Cache) diskTrouble(err error) {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		c.mu.Lock()
		c.noDisk = time.Now().Add(noDiskPause).UnixNano()
		c.mu.Unlock()
		c.log.Warn("cache disk full: passing misses through", "pause", noDiskPause, "err", err)
		return
	}
	c.log.Error("cache disk error", "err", err)
}

const noDiskPause = 5 * time.Second
