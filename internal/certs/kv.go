// Package certs manages the fleet's TLS material in storage that every clone
// reads: ACME certificates (certmagic) ordered and renewed by the
// cron_leader only and served by every node, and session-ticket keys
// rotated by the leader so that a session from one node resumes on another.
//
// Roles. The leader runs certmagic (orders, renewals, OCSP fetches) with
// its Storage in the KV. Every node, the leader included, serves the
// certificates it finds in the KV (reloaded on the KV's change signal, so
// followers pick up new and renewed certificates without a restart),
// answers TLS-ALPN-01 validations from the challenge the leader stored
// (the CA may reach any clone, since DNS sends it to any of them), staples
// the OCSP response the leader stored, and for on-demand names asks the
// app server, then asks the leader (a key under "ondemand/") and waits.
// Followers never talk to the CA.
//
// Storage. Everything goes through KV, a small key-value interface with
// change notifications. This package provides MongoKV, the fleet's store:
// a collection reached through the node's own Mongo proxy (its in-process
// connection), so that it replicates like the application's data, with
// every value encrypted under the fleet secret; a folder-backed FileKV
// (several processes may share the folder: one machine, or a shared
// volume); and an in-memory one for tests.
//
// Why the Mongo layer rather than the mesh: certificates, private keys and
// the ACME account must survive a restart of the whole fleet (the mesh
// keeps nothing), otherwise every restart re-orders and runs into the CA's
// rate limits; each node reads its local replica, so a handshake never
// waits on another node; and the locks need no cross-node atomicity
// because only the leader takes them (Create is atomic per replica, which
// also stops a misconfigured second leader on the same replica). The
// change signal is a poll of the local replica's revisions, which sees
// local writes and replicated ones alike.
package certs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// KV is the shared storage. Keys are slash-separated paths ("a/b/c") of
// printable characters without "." or ".." elements. Missing keys give
// errors that match fs.ErrNotExist.
type KV interface {
	Get(ctx context.Context, key string) ([]byte, error)
	Put(ctx context.Context, key string, value []byte) error
	// Create stores value only when key does not exist (an error matching
	// fs.ErrExist otherwise). Locks are built on it.
	Create(ctx context.Context, key string, value []byte) error
	// Delete removes key and every key under key + "/". Deleting a missing
	// key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns every key equal to prefix or under prefix + "/"
	// (prefix "" lists everything), sorted.
	List(ctx context.Context, prefix string) ([]string, error)
	Stat(ctx context.Context, key string) (KeyInfo, error)
	// Subscribe signals on the channel (capacity 1, signals coalesce) after
	// any key under prefix changed, whoever changed it. cancel stops it.
	Subscribe(prefix string) (ch <-chan struct{}, cancel func())
}

// KeyInfo describes a stored value.
type KeyInfo struct {
	Modified time.Time
	Size     int64
}

// ValidKey reports whether key is usable with every KV.
func ValidKey(key string) error {
	if key == "" || len(key) > 1024 || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") {
		return fmt.Errorf("invalid key %q", key)
	}
	for _, el := range strings.Split(key, "/") {
		if el == "" || el == "." || el == ".." {
			return fmt.Errorf("invalid key %q", key)
		}
	}
	for _, r := range key {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return fmt.Errorf("invalid key %q", key)
		}
	}
	return nil
}

func under(key, prefix string) bool {
	return prefix == "" || key == prefix || strings.HasPrefix(key, prefix+"/")
}

// subscribers is the notification half shared by both KVs.
type subscribers struct {
	mu   sync.Mutex
	next int
	subs map[int]subscription
}

type subscription struct {
	prefix string
	ch     chan struct{}
}

func (s *subscribers) subscribe(prefix string) (<-chan struct{}, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subs == nil {
		s.subs = map[int]subscription{}
	}
	id := s.next
	s.next++
	ch := make(chan struct{}, 1)
	s.subs[id] = subscription{prefix: prefix, ch: ch}
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.mu.Unlock()
	}
}

// notify signals every subscriber whose prefix covers one of keys. Sends
// never block: a pending signal already says "look again".
func (s *subscribers) notify(keys ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sub := range s.subs {
		for _, k := range keys {
			if under(k, sub.prefix) || under(sub.prefix, k) {
				select {
				case sub.ch <- struct{}{}:
				default:
				}
				break
			}
		}
	}
}

// MemKV is an in-memory KV for one process (tests, single nodes).
type MemKV struct {
	mu   sync.Mutex
	data map[string]memEntry
	subscribers
}

type memEntry struct {
	val []byte
	mod time.Time
}

// NewMemKV returns an empty MemKV.
func NewMemKV() *MemKV { return &MemKV{data: map[string]memEntry{}} }

func (m *MemKV) Get(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.data[key]
	if !ok {
		return nil, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	return append([]byte(nil), e.val...), nil
}

func (m *MemKV) Put(_ context.Context, key string, value []byte) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	m.mu.Lock()
	m.data[key] = memEntry{val: append([]byte(nil), value...), mod: time.Now()}
	m.mu.Unlock()
	m.notify(key)
	return nil
}

func (m *MemKV) Create(_ context.Context, key string, value []byte) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	m.mu.Lock()
	if _, ok := m.data[key]; ok {
		m.mu.Unlock()
		return fmt.Errorf("%s: %w", key, fs.ErrExist)
	}
	m.data[key] = memEntry{val: append([]byte(nil), value...), mod: time.Now()}
	m.mu.Unlock()
	m.notify(key)
	return nil
}

func (m *MemKV) Delete(_ context.Context, key string) error {
	m.mu.Lock()
	var gone []string
	for k := range m.data {
		if under(k, key) {
			delete(m.data, k)
			gone = append(gone, k)
		}
	}
	m.mu.Unlock()
	if len(gone) > 0 {
		m.notify(gone...)
	}
	return nil
}

func (m *MemKV) List(_ context.Context, prefix string) ([]string, error) {
	m.mu.Lock()
	var out []string
	for k := range m.data {
		if under(k, prefix) {
			out = append(out, k)
		}
	}
	m.mu.Unlock()
	sort.Strings(out)
	return out, nil
}

func (m *MemKV) Stat(_ context.Context, key string) (KeyInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.data[key]
	if !ok {
		return KeyInfo{}, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	return KeyInfo{Modified: e.mod, Size: int64(len(e.val))}, nil
}

func (m *MemKV) Subscribe(prefix string) (<-chan struct{}, func()) { return m.subscribe(prefix) }

// FileKV keeps each key in a file under a folder. Several processes may
// share the folder (a test of two nodes, or a shared volume): writes are
// atomic renames, Create is O_EXCL, and changes made by anyone are noticed
// by polling the folder every interval. Files are 0600: the folder holds
// private keys.
type FileKV struct {
	dir      string
	interval time.Duration
	log      *slog.Logger
	subscribers

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// NewFileKV opens (creating) dir and starts watching it every interval
// (default 2s). Close stops the watcher.
func NewFileKV(dir string, interval time.Duration, log *slog.Logger) (*FileKV, error) {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("file kv: %w", err)
	}
	f := &FileKV{dir: dir, interval: interval, log: log, stop: make(chan struct{}), done: make(chan struct{})}
	// The first reading is taken before NewFileKV returns: taken by the
	// watcher later, it could already include a write made meanwhile,
	// which would then never be signalled (CI met it).
	go f.watch(f.snapshot())
	return f, nil
}

// Close stops the watcher.
func (f *FileKV) Close() error {
	f.once.Do(func() { close(f.stop) })
	<-f.done
	return nil
}

func (f *FileKV) file(key string) (string, error) {
	if err := ValidKey(key); err != nil {
		return "", err
	}
	return filepath.Join(f.dir, filepath.FromSlash(key)), nil
}

func (f *FileKV) Get(_ context.Context, key string) ([]byte, error) {
	p, err := f.file(key)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil && errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	return b, err
}

func (f *FileKV) Put(_ context.Context, key string, value []byte) error {
	p, err := f.file(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(value)
	if err := errors.Join(werr, tmp.Sync(), tmp.Close()); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	f.notify(key) // local subscribers need not wait for the poll
	return nil
}

func (f *FileKV) Create(_ context.Context, key string, value []byte) error {
	p, err := f.file(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	// Written in full before it appears under its name, so a reader never
	// sees half a value: a hard link fails if the name exists (O_EXCL
	// semantics) and is atomic.
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(value)
	if err := errors.Join(werr, tmp.Sync(), tmp.Close()); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), p); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", key, fs.ErrExist)
		}
		return err
	}
	f.notify(key)
	return nil
}

func (f *FileKV) Delete(_ context.Context, key string) error {
	p, err := f.file(key)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(p); err != nil {
		return err
	}
	f.notify(key)
	return nil
}

func (f *FileKV) List(_ context.Context, prefix string) ([]string, error) {
	root := f.dir
	if prefix != "" {
		p, err := f.file(prefix)
		if err != nil {
			return nil, err
		}
		root = p
	}
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || strings.HasPrefix(d.Name(), ".tmp-") {
			return nil
		}
		rel, err := filepath.Rel(f.dir, p)
		if err != nil {
			return err
		}
		out = append(out, filepath.ToSlash(rel))
		return nil
	})
	sort.Strings(out)
	return out, err
}

func (f *FileKV) Stat(_ context.Context, key string) (KeyInfo, error) {
	p, err := f.file(key)
	if err != nil {
		return KeyInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return KeyInfo{}, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
		}
		return KeyInfo{}, err
	}
	if fi.IsDir() {
		return KeyInfo{}, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	return KeyInfo{Modified: fi.ModTime(), Size: fi.Size()}, nil
}

func (f *FileKV) Subscribe(prefix string) (<-chan struct{}, func()) { return f.subscribe(prefix) }

// watch polls the folder and notifies subscribers of keys whose size or
// modification time changed, or that appeared or disappeared: that is how
// one process learns of another's writes.
func (f *FileKV) watch(seen map[string]string) {
	defer close(f.done)
	t := time.NewTicker(f.interval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		now := f.snapshot()
		var changed []string
		for k, st := range now {
			if seen[k] != st {
				changed = append(changed, k)
			}
		}
		for k := range seen {
			if _, ok := now[k]; !ok {
				changed = append(changed, k)
			}
		}
		seen = now
		if len(changed) > 0 {
			f.notify(changed...)
		}
	}
}

func (f *FileKV) snapshot() map[string]string {
	out := map[string]string{}
	_ = filepath.WalkDir(f.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), ".tmp-") {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(f.dir, p)
		out[path.Clean(filepath.ToSlash(rel))] = fmt.Sprintf("%d/%d", fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	return out
}
