package certs

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TicketKeyName is where the cluster's session-ticket keys live in the KV.
const TicketKeyName = "tls/session_ticket_keys"

// TicketOptions configure TicketKeys.
type TicketOptions struct {
	Leader bool
	// Period is how often the leader makes a new key (default 24h). The
	// previous key is kept for one more period so tickets it encrypted
	// still resume; older keys are dropped.
	Period time.Duration
	// RetryInterval is how soon the leader tries again after the storage
	// refused a rotation (default 5s).
	RetryInterval time.Duration
}

// TicketKeys distributes TLS session-ticket keys: the leader makes and
// rotates them in the KV, every node (the leader too) applies what the KV
// holds, so a ticket from one node resumes on any other. Until the leader
// has written keys, each node keeps its own (crypto/tls's default).
type TicketKeys struct {
	opts  TicketOptions
	kv    KV
	apply func([][32]byte)
	log   *slog.Logger
	m     *ticketMetrics

	mu      sync.Mutex
	applied string // JSON of the last keys applied, to skip no-op updates

	cancel context.CancelFunc
	done   chan struct{}
	now    func() time.Time
}

type storedTicketKeys struct {
	// Keys, newest first: the first encrypts, all decrypt.
	Keys []storedTicketKey `json:"keys"`
}

type storedTicketKey struct {
	Key     []byte    `json:"key"` // 32 bytes
	Created time.Time `json:"created"`
}

// NewTicketKeys builds the manager; apply is called with the keys (newest
// first) at start and on every change: pass transport.Server's
// SetSessionTicketKeys.
func NewTicketKeys(opts TicketOptions, kv KV, apply func([][32]byte), log *slog.Logger, reg prometheus.Registerer) (*TicketKeys, error) {
	if opts.Period <= 0 {
		opts.Period = 24 * time.Hour
	}
	m := &ticketMetrics{
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_tls_ticket_key_rotations_total", Help: "Session-ticket keys made by this node (the leader).",
		}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgenode_tls_ticket_keys_applied_total", Help: "Times this node applied the cluster's session-ticket keys.",
		}),
	}
	for _, c := range []prometheus.Collector{m.rotations, m.applied} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("certs: register metrics: %w", err)
		}
	}
	return &TicketKeys{opts: opts, kv: kv, apply: apply, log: log, m: m, now: time.Now}, nil
}

type ticketMetrics struct {
	rotations prometheus.Counter
	applied   prometheus.Counter
}

// Start applies the stored keys (the leader first makes them if missing or
// due), then follows the KV until Stop; the leader rotates every Period.
// Storage that cannot be read or written yet (the replicated database
// still syncing) is not a failure of the node: the node uses its own keys
// meanwhile and the leader retries every RetryInterval.
func (t *TicketKeys) Start(ctx context.Context) error {
	pending := false
	if t.opts.Leader {
		if _, err := t.rotateIfDue(ctx); err != nil {
			t.log.Warn("ticket keys: cannot store the cluster's keys yet; retrying", "err", err, "every", t.retryInterval())
			pending = true
		}
	}
	if err := t.refresh(ctx); err != nil && !pending {
		if errors.Is(err, fs.ErrNotExist) {
			t.log.Info("ticket keys: none stored yet (the cron_leader makes them); using this node's own for now")
		} else {
			t.log.Warn("ticket keys: cannot read the cluster's keys; using this node's own for now", "err", err)
		}
	}
	ch, cancelSub := t.kv.Subscribe(TicketKeyName)
	rctx, cancel := context.WithCancel(context.Background())
	t.cancel, t.done = cancel, make(chan struct{})
	go func() {
		defer close(t.done)
		defer cancelSub()
		var tick <-chan time.Time
		if t.opts.Leader {
			// Checked more often than Period so a rotation that failed
			// (storage down) is retried soon.
			tk := time.NewTicker(min(t.opts.Period/4, time.Hour))
			defer tk.Stop()
			tick = tk.C
		}
		retry := time.NewTimer(t.retryInterval())
		defer retry.Stop()
		if !pending {
			retry.Stop()
		}
		rotate := func() {
			if _, err := t.rotateIfDue(rctx); err != nil {
				if !pending {
					t.log.Warn("ticket keys: rotate; retrying", "err", err, "every", t.retryInterval())
				}
				pending = true
				retry.Reset(t.retryInterval())
				return
			}
			if pending {
				t.log.Info("ticket keys: stored")
			}
			pending = false
		}
		for {
			select {
			case <-rctx.Done():
				return
			case <-ch:
				if err := t.refresh(rctx); err != nil {
					t.log.Warn("ticket keys: reload", "err", err)
				}
			case <-tick:
				rotate()
			case <-retry.C:
				rotate()
			}
		}
	}()
	return nil
}

func (t *TicketKeys) retryInterval() time.Duration {
	if t.opts.RetryInterval > 0 {
		return t.opts.RetryInterval
	}
	return 5 * time.Second
}

// Stop ends the watcher.
func (t *TicketKeys) Stop() {
	if t.cancel != nil {
		t.cancel()
		<-t.done
	}
}

// Rotate makes a new key now (leader only), keeping the previous one.
func (t *TicketKeys) Rotate(ctx context.Context) error {
	if !t.opts.Leader {
		return ErrNotLeader
	}
	cur, err := t.load(ctx)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return t.store(ctx, t.rotated(cur))
}

func (t *TicketKeys) rotateIfDue(ctx context.Context) (bool, error) {
	cur, err := t.load(ctx)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if len(cur.Keys) > 0 && t.now().Sub(cur.Keys[0].Created) < t.opts.Period {
		return false, nil
	}
	return true, t.store(ctx, t.rotated(cur))
}

// rotated puts a new key first and keeps only the one before it.
func (t *TicketKeys) rotated(cur storedTicketKeys) storedTicketKeys {
	k := make([]byte, 32)
	_, _ = rand.Read(k) // crypto/rand never fails on Linux
	next := storedTicketKeys{Keys: []storedTicketKey{{Key: k, Created: t.now().UTC()}}}
	if len(cur.Keys) > 0 {
		next.Keys = append(next.Keys, cur.Keys[0])
	}
	return next
}

func (t *TicketKeys) store(ctx context.Context, keys storedTicketKeys) error {
	b, err := json.Marshal(keys)
	if err != nil {
		return err
	}
	if err := t.kv.Put(ctx, TicketKeyName, b); err != nil {
		return fmt.Errorf("ticket keys: store: %w", err)
	}
	t.m.rotations.Inc()
	t.log.Info("ticket keys: rotated", "keys", len(keys.Keys))
	return t.refresh(ctx)
}

func (t *TicketKeys) load(ctx context.Context) (storedTicketKeys, error) {
	var s storedTicketKeys
	b, err := t.kv.Get(ctx, TicketKeyName)
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("ticket keys: %w", err)
	}
	return s, nil
}

// refresh applies the stored keys when they differ from the last applied.
func (t *TicketKeys) refresh(ctx context.Context) error {
	s, err := t.load(ctx)
	if err != nil {
		return err
	}
	var keys [][32]byte
	for _, k := range s.Keys {
		if len(k.Key) != 32 {
			return fmt.Errorf("ticket keys: a key of %d bytes", len(k.Key))
		}
		keys = append(keys, [32]byte(k.Key))
	}
	if len(keys) == 0 {
		return errors.New("ticket keys: none stored")
	}
	b, _ := json.Marshal(s)
	t.mu.Lock()
	same := string(b) == t.applied
	t.applied = string(b)
	t.mu.Unlock()
	if !same {
		t.apply(keys)
		t.m.applied.Inc()
	}
	return nil
}
