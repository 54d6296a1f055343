package certs

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"sort"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// MongoKV keeps each key in a document of a collection reached through the
// node's Mongo proxy, so every write is captured and replicated to every
// clone like the application's own data, and survives restarts of the
// whole fleet (the database is on disk).
//
// Documents are {_id: key, v: bytes, size, mod, rev}, written with $set
// only: the proxy refuses replacement documents on replicated collections.
//
// Values are sealed (see seal) with a key derived from the fleet secret,
// which every clone is given and the database never holds: a dump, a
// backup, or anyone who reaches the database directly sees no private key
// or ticket key, and a value they write, or move from another key, is an
// error rather than TLS material. The metadata (size, of the plaintext;
// mod; rev) stays in the clear: the watcher and Stat need it, and it tells
// nothing secret.
// Reads are of this node's replica. Create is atomic per replica (the
// proxy answers 11000 for an insert of an existing _id); across nodes two
// concurrent Creates of one key converge to one value (the newer insert
// wins, field by field), which is why only the leader takes locks.
//
// Changes made by anyone (a local write, or a peer's write applied by
// replication) are noticed by reading the collection's revisions every
// interval: the collection is small (certificates, keys, locks), and a poll
// needs nothing from the replication layer.
//
// A MongoKV is built before the database is up (the TLS parts that use it
// are built with the node) and started once it is: until Start, every
// operation fails with ErrNotStarted.
type MongoKV struct {
	aead     cipher.AEAD
	interval time.Duration
	log      *slog.Logger
	subscribers

	coll atomic.Pointer[mongo.Collection]
	// ctx ends with Close; it bounds the watcher and its polls.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	// started guards done: Close waits for the watcher only if it ran.
	started atomic.Bool
}

// ErrNotStarted is returned by a MongoKV's operations before Start.
var ErrNotStarted = errors.New("mongo kv: the database is not up yet")

// kvDoc is one stored key.
type kvDoc struct {
	Key  string    `bson:"_id"`
	V    []byte    `bson:"v,omitempty"`
	Size int64     `bson:"size"`
	Mod  time.Time `bson:"mod"`
	// Rev changes with every write, so the watcher sees two writes within
	// one millisecond of the same size as two changes.
	Rev int64 `bson:"rev"`
}

// MinSecretLen is the shortest fleet secret NewMongoKV accepts, in bytes:
// a secret of 32 random characters or more.
const MinSecretLen = 32

// ErrCannotDecrypt is matched by the error of reading a value that does
// not open with this node's fleet secret.
var ErrCannotDecrypt = errors.New("cannot decrypt the stored value: the fleet secret differs between nodes or the value was tampered with")

// ErrNotSealed is matched by the error of reading a value that was not
// sealed by a MongoKV (no known version prefix): never served as is.
var ErrNotSealed = errors.New("the stored value is not sealed with the fleet secret (unknown format): it was not written by this version of edgenode")

// sealVersion is the first byte of a sealed value: AES-256-GCM under
// sealKDFInfo's key, a 12-byte nonce, then the ciphertext and tag.
const sealVersion = 1

// sealKDFInfo is HKDF's info for the value key: the key is this one
// purpose's, whatever else the fleet secret may be used for one day.
const sealKDFInfo = "edgenode fleet storage v1: AES-256-GCM value key"

// NewMongoKV builds a MongoKV whose values are sealed with a key derived
// from secret (the fleet secret: at least MinSecretLen bytes, the same on
// every clone), that will watch its collection every interval (default
// 2s) once started.
func NewMongoKV(secret []byte, interval time.Duration, log *slog.Logger) (*MongoKV, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("mongo kv: the fleet secret is %d bytes, want at least %d (random)", len(secret), MinSecretLen)
	}
	key, err := hkdf.Key(sha256.New, secret, nil, sealKDFInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("mongo kv: deriving the value key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("mongo kv: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("mongo kv: %w", err)
	}
	if interval <= 0 {
		interval = 2 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &MongoKV{aead: aead, interval: interval, log: log, ctx: ctx, cancel: cancel, done: make(chan struct{})}, nil
}

// seal encrypts value for key: version byte, random nonce, AES-256-GCM
// ciphertext and tag. The additional data is the version and the key's
// name, so a sealed value moved under another key does not open.
func (m *MongoKV) seal(key string, value []byte) []byte {
	out := make([]byte, 1+m.aead.NonceSize(), 1+m.aead.NonceSize()+len(value)+m.aead.Overhead())
	out[0] = sealVersion
	_, _ = rand.Read(out[1:]) // crypto/rand never fails on Linux
	return m.aead.Seal(out, out[1:], value, additionalData(key))
}

// open is seal's inverse. It never returns a value that did not open.
func (m *MongoKV) open(key string, sealed []byte) ([]byte, error) {
	if len(sealed) == 0 || sealed[0] != sealVersion {
		return nil, ErrNotSealed
	}
	ns := m.aead.NonceSize()
	if len(sealed) < 1+ns+m.aead.Overhead() {
		return nil, ErrCannotDecrypt
	}
	v, err := m.aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], additionalData(key))
	if err != nil {
		return nil, ErrCannotDecrypt
	}
	return v, nil
}

func additionalData(key string) []byte {
	return append([]byte{sealVersion}, key...)
}

// Start uses coll (reached through the proxy, so that writes replicate)
// and starts the watcher. The caller owns coll's client and disconnects it
// after Close.
func (m *MongoKV) Start(coll *mongo.Collection) {
	if !m.started.CompareAndSwap(false, true) {
		return
	}
	m.coll.Store(coll)
	go m.watch()
}

// Close stops the watcher.
func (m *MongoKV) Close() error {
	m.cancel()
	if m.started.Load() {
		<-m.done
	}
	return nil
}

func (m *MongoKV) collection() (*mongo.Collection, error) {
	if c := m.coll.Load(); c != nil {
		return c, nil
	}
	return nil, ErrNotStarted
}

func (m *MongoKV) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ValidKey(key); err != nil {
		return nil, err
	}
	coll, err := m.collection()
	if err != nil {
		return nil, err
	}
	var d kvDoc
	err = coll.FindOne(ctx, bson.D{{Key: "_id", Value: key}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("mongo kv: get %s: %w", key, err)
	}
	v, err := m.open(key, d.V)
	if err != nil {
		return nil, fmt.Errorf("mongo kv: get %s: %w", key, err)
	}
	return v, nil
}

func (m *MongoKV) Put(ctx context.Context, key string, value []byte) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	coll, err := m.collection()
	if err != nil {
		return err
	}
	_, err = coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: key}},
		bson.D{{Key: "$set", Value: m.fields(key, value)}}, options.UpdateOne().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("mongo kv: put %s: %w", key, err)
	}
	m.notify(key) // local subscribers need not wait for the poll
	return nil
}

func (m *MongoKV) Create(ctx context.Context, key string, value []byte) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	coll, err := m.collection()
	if err != nil {
		return err
	}
	doc := append(bson.D{{Key: "_id", Value: key}}, m.fields(key, value)...)
	if _, err := coll.InsertOne(ctx, doc); err != nil {
		if mongo.IsDuplicateKeyError(err) {
			return fmt.Errorf("%s: %w", key, fs.ErrExist)
		}
		return fmt.Errorf("mongo kv: create %s: %w", key, err)
	}
	m.notify(key)
	return nil
}

// fields is a stored key's document but its _id: the sealed value and the
// metadata (of the plaintext).
func (m *MongoKV) fields(key string, value []byte) bson.D {
	var r [8]byte
	_, _ = rand.Read(r[:]) // crypto/rand never fails on Linux
	return bson.D{
		{Key: "v", Value: bson.Binary{Data: m.seal(key, value)}},
		{Key: "size", Value: int64(len(value))},
		{Key: "mod", Value: time.Now().UTC()},
		{Key: "rev", Value: int64(binary.LittleEndian.Uint64(r[:]) >> 1)},
	}
}

// underFilter matches key and every key under key + "/" ("" matches all).
func underFilter(key string) bson.D {
	if key == "" {
		return bson.D{}
	}
	return bson.D{{Key: "$or", Value: bson.A{
		bson.D{{Key: "_id", Value: key}},
		bson.D{{Key: "_id", Value: bson.Regex{Pattern: "^" + regexp.QuoteMeta(key+"/")}}},
	}}}
}

func (m *MongoKV) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	coll, err := m.collection()
	if err != nil {
		return err
	}
	res, err := coll.DeleteMany(ctx, underFilter(key))
	if err != nil {
		return fmt.Errorf("mongo kv: delete %s: %w", key, err)
	}
	if res.DeletedCount > 0 {
		m.notify(key)
	}
	return nil
}

func (m *MongoKV) List(ctx context.Context, prefix string) ([]string, error) {
	if prefix != "" {
		if err := ValidKey(prefix); err != nil {
			return nil, err
		}
	}
	docs, err := m.revisions(ctx, underFilter(prefix))
	if err != nil {
		return nil, fmt.Errorf("mongo kv: list %q: %w", prefix, err)
	}
	out := make([]string, 0, len(docs))
	for k := range docs {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

func (m *MongoKV) Stat(ctx context.Context, key string) (KeyInfo, error) {
	if err := ValidKey(key); err != nil {
		return KeyInfo{}, err
	}
	coll, err := m.collection()
	if err != nil {
		return KeyInfo{}, err
	}
	var d kvDoc
	err = coll.FindOne(ctx, bson.D{{Key: "_id", Value: key}},
		options.FindOne().SetProjection(bson.D{{Key: "size", Value: 1}, {Key: "mod", Value: 1}})).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return KeyInfo{}, fmt.Errorf("%s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return KeyInfo{}, fmt.Errorf("mongo kv: stat %s: %w", key, err)
	}
	return KeyInfo{Modified: d.Mod, Size: d.Size}, nil
}

func (m *MongoKV) Subscribe(prefix string) (<-chan struct{}, func()) { return m.subscribe(prefix) }

// revisions reads key → rev for the documents matching filter.
func (m *MongoKV) revisions(ctx context.Context, filter bson.D) (map[string]int64, error) {
	coll, err := m.collection()
	if err != nil {
		return nil, err
	}
	cur, err := coll.Find(ctx, filter, options.Find().SetProjection(bson.D{{Key: "rev", Value: 1}}))
	if err != nil {
		return nil, err
	}
	defer cur.Close(ctx)
	out := map[string]int64{}
	for cur.Next(ctx) {
		var d kvDoc
		if err := cur.Decode(&d); err != nil {
			return nil, err
		}
		out[d.Key] = d.Rev
	}
	return out, cur.Err()
}

// watch polls the revisions and notifies subscribers of keys that changed,
// appeared or disappeared: that is how this node learns of the writes
// replication applied. A failed poll (database not up yet, or restarting)
// is retried at the next tick; the first success after failures compares
// with the last good snapshot, so nothing is missed.
func (m *MongoKV) watch() {
	defer close(m.done)
	ctx := m.ctx
	var seen map[string]int64
	failing := false
	t := time.NewTicker(m.interval)
	defer t.Stop()
	for {
		pctx, pcancel := context.WithTimeout(ctx, max(m.interval, 5*time.Second))
		now, err := m.revisions(pctx, bson.D{})
		pcancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				m.log.Warn("mongo kv: cannot read the fleet storage; retrying", "err", err)
			}
			failing = true
		default:
			if failing {
				m.log.Info("mongo kv: fleet storage readable again")
			}
			failing = false
			if seen != nil {
				var changed []string
				for k, r := range now {
					if old, ok := seen[k]; !ok || old != r {
						changed = append(changed, k)
					}
				}
				for k := range seen {
					if _, ok := now[k]; !ok {
						changed = append(changed, k)
					}
				}
				if len(changed) > 0 {
					m.notify(changed...)
				}
			} else if len(now) > 0 {
				// First read: whoever subscribed before it may have read
				// an empty store (database still starting).
				keys := make([]string, 0, len(now))
				for k := range now {
					keys = append(keys, k)
				}
				m.notify(keys...)
			}
			seen = now
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
