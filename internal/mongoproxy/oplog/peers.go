package oplog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// Peers' acknowledged positions in this node's ops, and trimming below
// what everyone has.

// SetPeerAck durably records that peer has our local ops up to seq (it never moves back).
func (l *Log) SetPeerAck(peer string, seq uint64) error {
	if peer == "" {
		return errors.New("oplog: peer ack without a peer")
	}
	l.mu.Lock()
	if seq <= l.acks[peer] && l.hasAck(peer) {
		l.mu.Unlock()
		return nil
	}
	l.mu.Unlock()
	err := l.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta).Bucket(bucketAcks)
		if v := b.Get([]byte(peer)); v != nil && binary.BigEndian.Uint64(v) >= seq {
			return nil
		}
		return b.Put([]byte(peer), seqValue(seq))
	})
	if err != nil {
		return fmt.Errorf("oplog: set peer ack: %w", err)
	}
	l.mu.Lock()
	if seq > l.acks[peer] || !l.hasAck(peer) {
		l.acks[peer] = seq
	}
	l.mu.Unlock()
	return nil
}

func (l *Log) hasAck(peer string) bool { _, ok := l.acks[peer]; return ok }

// RemovePeer forgets a peer's position (a node that left the cluster for good), so it no longer
// holds back Trim.
func (l *Log) RemovePeer(peer string) error {
	err := l.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Bucket(bucketAcks).Delete([]byte(peer)) })
	if err != nil {
		return fmt.Errorf("oplog: remove peer: %w", err)
	}
	l.mu.Lock()
	delete(l.acks, peer)
	l.mu.Unlock()
	return nil
}

// PeerAcks returns every known peer's acknowledged position.
func (l *Log) PeerAcks() map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.acks)
}

// Trim deletes what no one needs any more: local ops at or below both the applied watermark and
// every known peer's acknowledgement (with no known peer, the applied watermark alone), and other
// origins' ops at or below their applied watermark.
func (l *Log) Trim() (removed int, err error) { return l.TrimBelow(nil) }

// TrimBelow is Trim with each origin's ops above keep[origin] kept in any case (origins missing
// from keep: no such bound). Replication keeps a retention window of every origin's ops, its own
// and the ones it applied: a node doing an initial sync can still stream from a peer's position,
// and a peer cut off from an origin can get its ops from here.
func (l *Log) TrimBelow(keep map[string]uint64) (removed int, err error) {
	// Only what is durably applied may go: persist the watermark first.
	l.flushWatermarks()
	l.mu.Lock()
	limits := map[string]uint64{}
	for origin, w := range l.persisted {
		if k, ok := keep[origin]; ok {
			w = min(w, k)
		}
		limits[origin] = w
	}
	local := limits[l.opts.Origin]
	for _, a := range l.acks {
		local = min(local, a)
	}
	limits[l.opts.Origin] = local
	l.mu.Unlock()
	var sizeBytes int64
	err = l.db.Update(func(tx *bolt.Tx) error {
		ops := tx.Bucket(bucketOps)
		for _, origin := range slices.Sorted(maps.Keys(limits)) {
			b := ops.Bucket([]byte(origin))
			if b == nil || limits[origin] == 0 {
				continue
			}
			c := b.Cursor()
			for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= limits[origin]; k, _ = c.First() {
				if err := c.Delete(); err != nil {
					return err
				}
				removed++
			}
		}
		sizeBytes = tx.Size()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("oplog: trim: %w", err)
	}
	l.mu.Lock()
	l.entries -= int64(removed)
	l.mu.Unlock()
	l.m.bytes.Set(float64(sizeBytes))
	if removed > 0 {
		l.log.Debug("op log trimmed", "removed", removed)
	}
	return removed, nil
}
