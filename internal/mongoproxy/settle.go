package mongoproxy

import (
	"context"
	"fmt"
	"time"
)

// A captured write whose store found no primary for StoreRetry is logged
// but not stored: its client got 10107 with RetryableWriteError, and the
// replica core keeps the op for Settle (see package replica,
// "Stepdowns"). Each captured write settles first, but a quiet
// application may send none for a long time, and meanwhile the op is
// missing from the database and metadata compaction waits. The settle
// loop stores such ops on its own as soon as the upstream has a primary
// again. It is one goroutine, owned by the Proxy (started by Start,
// stopped by Shutdown before the core closes), and a small state machine:
//
//	idle     nothing unstored: wait until the core reports more
//	primary  wait until the upstream has a known primary (SDAM)
//	settle   Admit, then Settle (one at a time with the captured writes'
//	         own Settle: the core serializes them), bounded by
//	         settleTimeout
//	backoff  Settle failed (the driver has not selected the new primary
//	         yet, writes are blocked, ...): wait, doubling up to
//	         settleBackoffMax, or less if the primary changes
//
// No lock is held while it waits or while Settle does its I/O.

// Bounds of the settle loop's waits.
const (
	settleTimeout    = 2 * time.Minute // one Settle, as a captured write (dispatchWrite)
	settleBackoffMin = 100 * time.Millisecond
	settleBackoffMax = 5 * time.Second
)

// settleLoop runs until ctx is done.
func (p *Proxy) settleLoop(ctx context.Context) {
	backoff := settleBackoffMin
	for {
		n, added := p.core.Unstored()
		if n == 0 {
			backoff = settleBackoffMin
			select {
			case <-added:
				continue
			case <-ctx.Done():
				return
			}
		}
		changed, err := p.waitForPrimary(ctx)
		if err != nil {
			return // ctx is done
		}
		err = p.settleOnce(ctx)
		if err == nil {
			backoff = settleBackoffMin
			continue // what gave up meanwhile, if anything
		}
		if ctx.Err() != nil {
			return
		}
		p.log.Warn("storing logged writes after the database came back failed; trying again", "unstored", n, "retry_in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-changed: // a new primary (or none): look again at once
		case <-ctx.Done():
			t.Stop()
			return
		}
		t.Stop()
		backoff = min(2*backoff, settleBackoffMax)
	}
}

// waitForPrimary returns once the upstream has a known primary, with the
// channel closed at its next change, or ctx's error.
func (p *Proxy) waitForPrimary(ctx context.Context) (changed <-chan struct{}, err error) {
	for {
		primary, ch := p.up.current()
		if primary != "" {
			return ch, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// settleOnce stores the unstored ops as a captured write would: admitted
// by the write gate (a node being synced takes no writes), then Settle.
func (p *Proxy) settleOnce(ctx context.Context) error {
	done, err := p.core.Admit()
	if err != nil {
		return fmt.Errorf("admit: %w", err)
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	return p.core.Settle(ctx)
}
