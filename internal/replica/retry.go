package replica

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/edgenode/edgenode/internal/mongoproxy/oplog"
)

// Retryable writes (see the package documentation, "Retryable writes"):
// per client session, the highest txnNumber that recorded a statement and
// each of its statements' results, kept as op log records written in the
// same transaction as the statements' ops.

// MongoDB error codes of retryable writes.
const (
	CodeTransactionTooOld            int32 = 225
	CodeIncompleteTransactionHistory int32 = 217
)

// DefaultSessionTTL is how long a session's records are kept after its
// last recorded statement: MongoDB's logicalSessionTimeoutMinutes (30), the
// longest a driver may keep using a session it has not used since.
const DefaultSessionTTL = 30 * time.Minute

// Record keys: recPrefix, the session key (SHA-256 of the lsid document),
// then, for a statement, the txnNumber and the stmtId, big-endian. The
// session's header (its txnNumber, when it was last written, and whether
// its results were dropped early) is the key without the suffix.
const (
	recPrefix   = 's'
	headerLen   = 1 + sha256.Size
	stmtKeyLen  = headerLen + 8 + 4
	headerBytes = 64 // what a header counts for against the bound
	stmtBytes   = stmtKeyLen + 16
	flagDropped = 1
)

type sessionKey [sha256.Size]byte

// session is what the core knows of one client session. Its fields are
// guarded by retryStore.mu; busy is the session's turn.
type session struct {
	key     sessionKey
	txn     int64     // highest txnNumber with recorded statements (0: none)
	at      time.Time // when a statement was last recorded
	dropped bool      // txn's results were dropped before the TTL (space bound)
	bytes   int64     // what its records count against the bound
	elem    *list.Element
	busy    chan struct{} // non-nil while a command holds the turn; closed when it ends
	waiters int
}

// retryStore is the in-memory index of the session records (the records
// themselves stay in the op log file; a retry reads its statement there).
// Its mutex is a leaf: held for a few instructions, never across I/O.
type retryStore struct {
	olog  *oplog.Log
	ttl   time.Duration
	max   int64 // bound on the records' bytes (<= 0: none)
	check *rankChecker
	met   *Metrics
	now   func() time.Time

	mu    sync.Mutex
	m     map[sessionKey]*session
	lru   list.List // sessions with a header, least recently written first
	bytes int64
}

func newRetryStore(olog *oplog.Log, ttl time.Duration, max int64, check *rankChecker, met *Metrics) *retryStore {
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	return &retryStore{olog: olog, ttl: ttl, max: max, check: check, met: met, now: time.Now, m: map[sessionKey]*session{}}
}

// load reads the headers and sizes of the records kept in the log. Expired
// ones go with the next write.
func (rs *retryStore) load() error {
	var all []*session
	err := rs.olog.ForEachRecord([]byte{recPrefix}, func(k, v []byte) error {
		var key sessionKey
		if len(k) < headerLen {
			return nil
		}
		copy(key[:], k[1:headerLen])
		s := rs.m[key]
		if s == nil {
			s = &session{key: key}
			rs.m[key] = s
			all = append(all, s)
		}
		switch len(k) {
		case headerLen:
			if len(v) != 17 {
				return fmt.Errorf("session record %x: bad header", k)
			}
			s.txn = int64(binary.BigEndian.Uint64(v))
			s.at = time.Unix(0, int64(binary.BigEndian.Uint64(v[8:])))
			s.dropped = v[16]&flagDropped != 0
			s.bytes += headerBytes
		case stmtKeyLen:
			s.bytes += stmtBytes + int64(len(v))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("replica: load retryable write records: %w", err)
	}
	slices.SortFunc(all, func(a, b *session) int { return a.at.Compare(b.at) })
	for _, s := range all {
		s.elem = rs.lru.PushBack(s)
		rs.bytes += s.bytes
	}
	return nil
}

// Txn is a client's retryable write command (one txnNumber of one
// session) while it holds its session's turn: no other command of the
// session runs until End, as MongoDB checks a session out for one
// operation at a time. A retry that arrives while the original is still
// running waits for it, and then finds its statements recorded.
type Txn struct {
	rs  *retryStore
	s   *session
	txn int64
}

// BeginTxn takes the turn of the session lsid (the client's session
// identity: its lsid document byte for byte, followed by its authenticated
// user where the database authenticates) for txnNumber txn, waiting while another command of the
// session runs (until ctx ends). A txnNumber below the highest one the
// session recorded is refused with error 225 TransactionTooOld. Take it
// before Admit (its rank is below the write gate's) and End it once the
// command is answered.
func (r *Replica) BeginTxn(ctx context.Context, lsid []byte, txn int64) (*Txn, error) {
	rs := r.retry
	key := sessionKey(sha256.Sum256(lsid))
	rs.check.acquire(rankSession)
	rs.mu.Lock()
	s := rs.m[key]
	if s == nil {
		s = &session{key: key}
		rs.m[key] = s
	}
	for s.busy != nil {
		ch := s.busy
		s.waiters++
		rs.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctx.Err()
		}
		rs.mu.Lock()
		s.waiters--
		if err != nil {
			rs.forgetIdle(s)
			rs.mu.Unlock()
			rs.check.release(rankSession)
			return nil, fmt.Errorf("replica: waiting for the session's previous command: %w", err)
		}
	}
	if s.txn > txn {
		have := s.txn
		rs.forgetIdle(s)
		rs.mu.Unlock()
		rs.check.release(rankSession)
		return nil, errorf(CodeTransactionTooOld, "Retryable write with txnNumber %d is prohibited on session %x because a newer retryable write with txnNumber %d has already started on this session.", txn, key[:8], have)
	}
	s.busy = make(chan struct{})
	rs.mu.Unlock()
	return &Txn{rs: rs, s: s, txn: txn}, nil
}

// forgetIdle drops a session nobody uses and nothing records; call with mu.
func (rs *retryStore) forgetIdle(s *session) {
	if s.elem == nil && s.busy == nil && s.waiters == 0 {
		delete(rs.m, s.key)
	}
}

// End gives the session's turn back. Call it exactly once.
func (t *Txn) End() {
	rs := t.rs
	rs.mu.Lock()
	close(t.s.busy)
	t.s.busy = nil
	rs.forgetIdle(t.s)
	rs.mu.Unlock()
	rs.check.release(rankSession)
}

// Recorded returns the recorded result of statement stmt of this
// txnNumber (nil: not executed, run it). When the statement's results
// were dropped before their time (the space bound), it returns error 217
// IncompleteTransactionHistory, as MongoDB does when its oplog no longer
// holds a retried statement: executing it again could apply it twice.
func (t *Txn) Recorded(stmt int32) ([]byte, error) {
	rs := t.rs
	rs.mu.Lock()
	same, dropped := t.s.txn == t.txn, t.s.dropped
	rs.mu.Unlock()
	if !same {
		return nil, nil
	}
	v, err := rs.olog.RecordValue(stmtKey(t.s.key, t.txn, stmt))
	if err != nil {
		return nil, err
	}
	if v == nil && dropped {
		return nil, errorf(CodeIncompleteTransactionHistory, "Incomplete history detected for transaction %d on session %x: its records were dropped early (mongo.retry_records_bytes)", t.txn, t.s.key[:8])
	}
	if v != nil {
		rs.met.retryHits.Inc()
	}
	return v, nil
}

// Record records results of statements that logged no op (a statement
// that matched nothing, say): one fsync, shared with concurrent appends.
func (t *Txn) Record(ctx context.Context, stmts []StmtResult) error {
	recs := t.rs.plan(t, stmts)
	if err := t.rs.olog.AppendLocalRecords(ctx, nil, recs); err != nil {
		return fmt.Errorf("replica: record retryable statements: %w", err)
	}
	return nil
}

// StmtResult is a statement's result as the front-end records it.
type StmtResult struct {
	ID     int32
	Result []byte
}

// plan returns the records that store results for t's statements, drop
// the session's older txnNumber, and expire or (over the bound) drop
// other sessions' records, and updates the index as if they were written.
// A failed write leaves the index ahead of the log, which only costs a
// statement never recorded being run (it was not logged either) or a
// session forgotten early in memory (the file keeps it until the next
// start).
func (rs *retryStore) plan(t *Txn, stmts []StmtResult) []oplog.Record {
	var recs []oplog.Record
	rs.mu.Lock()
	defer rs.mu.Unlock()
	s, now := t.s, rs.now()
	if s.txn != t.txn {
		if s.txn != 0 {
			recs = append(recs, oplog.Record{Key: stmtPrefix(s.key, s.txn), DeletePrefix: true})
			rs.bytes -= s.bytes - headerBytes
		} else {
			rs.bytes += headerBytes
		}
		s.txn, s.dropped, s.bytes = t.txn, false, headerBytes
	}
	for _, st := range stmts {
		recs = append(recs, oplog.Record{Key: stmtKey(s.key, t.txn, st.ID), Value: st.Result})
		n := stmtBytes + int64(len(st.Result))
		s.bytes += n
		rs.bytes += n
	}
	s.at = now
	recs = append(recs, oplog.Record{Key: headerKey(s.key), Value: header(s)})
	if s.elem == nil {
		s.elem = rs.lru.PushBack(s)
	} else {
		rs.lru.MoveToBack(s.elem)
	}
	// Expired sessions go; then, over the bound, the oldest ones' results
	// (their header stays, so that a retry gets 217 instead of running
	// again); then, if headers alone are too many, whole sessions, oldest
	// first. A busy session (this one among them) is never touched.
	for e := rs.lru.Front(); e != nil; {
		o, next := e.Value.(*session), e.Next()
		if now.Sub(o.at) < rs.ttl {
			break
		}
		if o.busy == nil {
			recs = rs.evict(recs, o, "expired")
		}
		e = next
	}
	for e := rs.lru.Front(); e != nil && rs.max > 0 && rs.bytes > rs.max; e = e.Next() {
		if o := e.Value.(*session); o.busy == nil && !o.dropped && o.bytes > headerBytes {
			recs = append(recs, oplog.Record{Key: stmtPrefix(o.key, o.txn), DeletePrefix: true})
			rs.bytes -= o.bytes - headerBytes
			o.bytes, o.dropped = headerBytes, true
			recs = append(recs, oplog.Record{Key: headerKey(o.key), Value: header(o)})
			rs.met.retryEvicted.WithLabelValues("results").Inc()
		}
	}
	for e := rs.lru.Front(); e != nil && rs.max > 0 && rs.bytes > rs.max; {
		o, next := e.Value.(*session), e.Next()
		if o.busy == nil {
			recs = rs.evict(recs, o, "session")
		}
		e = next
	}
	return recs
}

// evict removes a whole session (what: the metric's label); call with mu.
func (rs *retryStore) evict(recs []oplog.Record, o *session, what string) []oplog.Record {
	rs.bytes -= o.bytes
	rs.lru.Remove(o.elem)
	o.elem = nil
	rs.forgetIdle(o)
	rs.met.retryEvicted.WithLabelValues(what).Inc()
	return append(recs, oplog.Record{Key: headerKey(o.key), DeletePrefix: true})
}

// forget removes the results of statements whose ops were undone (a
// unique index refused them): a retry must run them again, as MongoDB
// records a statement only when it succeeded.
func (rs *retryStore) forget(t *Txn, ids []int32) []oplog.Record {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var recs []oplog.Record
	if t.s.txn != t.txn {
		return nil
	}
	for _, id := range ids {
		recs = append(recs, oplog.Record{Key: stmtKey(t.s.key, t.txn, id), Delete: true})
	}
	return recs
}

func headerKey(k sessionKey) []byte {
	return append([]byte{recPrefix}, k[:]...)
}

func stmtPrefix(k sessionKey, txn int64) []byte {
	return binary.BigEndian.AppendUint64(headerKey(k), uint64(txn))
}

func stmtKey(k sessionKey, txn int64, stmt int32) []byte {
	return binary.BigEndian.AppendUint32(stmtPrefix(k, txn), uint32(stmt))
}

func header(s *session) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(s.txn))
	b = binary.BigEndian.AppendUint64(b, uint64(s.at.UnixNano()))
	var f byte
	if s.dropped {
		f = flagDropped
	}
	return append(b, f)
}
