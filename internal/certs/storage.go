package certs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
)

// ErrNotLeader is returned by Storage.Lock on a node that is not the
// cron_leader: only the leader orders or renews certificates.
var ErrNotLeader = errors.New("certs: only the cron_leader orders certificates")

// lockPrefix holds the locks; lockTTL is how long a lock survives its
// holder (a crashed leader) before another may take it over. The holder
// refreshes it every lockTTL/3.
const (
	lockPrefix = "locks"
	lockTTL    = 2 * time.Minute
)

// Storage is certmagic.Storage over a KV. Locks are KV keys created with
// Create, so two processes never hold the same lock, and they are refused
// outright on followers: with a single cron_leader, ordering happens on one
// node, and with a misconfigured second leader the locks still keep the
// two from ordering the same certificate at once.
type Storage struct {
	kv     KV
	leader bool
	owner  string

	mu    sync.Mutex
	held  map[string]refresher // lock name -> its refresher
	clock func() time.Time
}

var _ certmagic.Storage = (*Storage)(nil)

// NewStorage wraps kv; owner names this node in lock records.
func NewStorage(kv KV, leader bool, owner string) *Storage {
	return &Storage{kv: kv, leader: leader, owner: owner, held: map[string]refresher{}, clock: time.Now}
}

func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	return s.kv.Put(ctx, key, value)
}

func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	return s.kv.Get(ctx, key)
}

func (s *Storage) Delete(ctx context.Context, key string) error {
	return s.kv.Delete(ctx, key)
}

func (s *Storage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// List gives the keys under path; without recursive, only the next path
// element (what a folder listing would show).
func (s *Storage) List(ctx context.Context, p string, recursive bool) ([]string, error) {
	keys, err := s.kv.List(ctx, p)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: %w", p, fs.ErrNotExist)
	}
	if recursive {
		return keys, nil
	}
	seen := map[string]bool{}
	var out []string
	for _, k := range keys {
		rest := strings.TrimPrefix(strings.TrimPrefix(k, p), "/")
		if rest == "" {
			continue
		}
		child := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			child = rest[:i]
		}
		full := child
		if p != "" {
			full = p + "/" + child
		}
		if !seen[full] {
			seen[full] = true
			out = append(out, full)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Stat describes key; a key that only prefixes others is a directory.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	ki, err := s.kv.Stat(ctx, key)
	if err == nil {
		return certmagic.KeyInfo{Key: key, Modified: ki.Modified, Size: ki.Size, IsTerminal: true}, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return certmagic.KeyInfo{}, err
	}
	keys, lerr := s.kv.List(ctx, key)
	if lerr != nil {
		return certmagic.KeyInfo{}, lerr
	}
	if len(keys) == 0 {
		return certmagic.KeyInfo{}, err
	}
	return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
}

type lockRecord struct {
	Owner   string    `json:"owner"`
	Expires time.Time `json:"expires"`
}

// Lock takes the named lock, waiting while another holder has it. A lock
// whose holder stopped refreshing it for lockTTL is taken over.
func (s *Storage) Lock(ctx context.Context, name string) error {
	if !s.leader {
		return ErrNotLeader
	}
	key := lockKey(name)
	for {
		rec, _ := json.Marshal(lockRecord{Owner: s.owner, Expires: s.clock().Add(lockTTL)})
		err := s.kv.Create(ctx, key, rec)
		if err == nil {
			s.startRefresh(name)
			return nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("lock %s: %w", name, err)
		}
		if b, gerr := s.kv.Get(ctx, key); gerr == nil {
			var cur lockRecord
			if json.Unmarshal(b, &cur) != nil || s.clock().After(cur.Expires) {
				// Stale (or garbage): remove it and race for it again
				// through Create, which only one process wins.
				_ = s.kv.Delete(ctx, key)
				continue
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("lock %s: %w", name, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

// Unlock releases a lock taken by Lock.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	r, ok := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if ok {
		// The refresher must be gone before the delete, or its last write
		// could bring the lock back.
		close(r.stop)
		<-r.done
	}
	return s.kv.Delete(ctx, lockKey(name))
}

// startRefresh keeps a held lock fresh until Unlock; the goroutine is
// owned by the lock and ends with it.
type refresher struct{ stop, done chan struct{} }

func (s *Storage) startRefresh(name string) {
	r := refresher{stop: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	s.held[name] = r
	s.mu.Unlock()
	go func() {
		defer close(r.done)
		t := time.NewTicker(lockTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-r.stop:
				return
			case <-t.C:
				rec, _ := json.Marshal(lockRecord{Owner: s.owner, Expires: s.clock().Add(lockTTL)})
				_ = s.kv.Put(context.Background(), lockKey(name), rec)
			}
		}
	}()
}

// Close releases every lock still held (a stopping leader).
func (s *Storage) Close() {
	s.mu.Lock()
	names := make([]string, 0, len(s.held))
	for n := range s.held {
		names = append(names, n)
	}
	s.mu.Unlock()
	for _, n := range names {
		_ = s.Unlock(context.Background(), n)
	}
}

func lockKey(name string) string {
	return lockPrefix + "/" + certmagic.StorageKeys.Safe(name)
}
