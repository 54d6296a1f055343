package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/cdn"
	"github.com/edgenode/edgenode/internal/config"
)

// purgeNamespace is the replicated collection where every cache purge is
// recorded. It is in the reserved database, which only the node's own
// in-process connections may name, so no client can forge or erase a
// purge.
const purgeNamespace = "edgenode_fleet.purges"

// purgeLog makes a cache purge reach every node, also one that was down or
// cut off from the mesh when the purge was issued.
//
// The admin route purges the key on this node and fans the purge out over
// the mesh to the nodes that are up (at once, but at most once); purgeLog
// also records it, {key, at}, in purgeNamespace through this node's Mongo
// proxy, so replication brings the record to every node: one that was cut
// off gets it when the partition heals, one that was down when it has
// restarted and caught up, and a node with a wiped disk from its initial
// sync. Each node reads the collection every interval and applies each
// record it has not applied since it started with cdn.Cache.PurgeBefore:
// a copy fetched before the purge is dropped, one fetched after it is
// kept, so applying a record again, or late, is harmless. Purge times and
// fetch times come from different nodes' clocks; the comparison is as
// exact as the clocks agree (mongo.max_clock_skew).
//
// Records older than the retention are deleted (by every node; deletes of
// one record converge): by then every copy a node kept from before the
// purge is past the cache's TTL and stale-while-revalidate, so it is not
// served again without asking the origin. A node down for longer than that
// misses the purge, and revalidates instead.
type purgeLog struct {
	cache     *cdn.Cache
	mongo     *mongoPart
	cfg       *config.Config
	log       *slog.Logger
	interval  time.Duration
	retention time.Duration
	gcEvery   time.Duration
	met       purgeMetrics

	client *mongo.Client // set by Start
	coll   atomic.Pointer[mongo.Collection]
	cancel context.CancelFunc
	done   chan struct{}
}

type purgeMetrics struct {
	records prometheus.Gauge
	applied prometheus.Counter
	errors  *prometheus.CounterVec
}

// Defaults of the purge log.
const (
	purgeInterval  = 2 * time.Second
	purgeGCEvery   = 10 * time.Minute
	purgeMinRetain = 24 * time.Hour
)

// purgeRecord is one document of purgeNamespace.
type purgeRecord struct {
	ID   bson.ObjectID `bson:"_id"`
	Key  string        `bson:"key"`
	At   time.Time     `bson:"at"`
	Node string        `bson:"node,omitempty"` // who purged: for people
}

func (p *purgeLog) Name() string { return "cdn-purges" }
func (p *purgeLog) Detail() string {
	return fmt.Sprintf("cache purges recorded in the replicated collection %s, so that nodes down or cut off when one is issued apply it when they return; read every %v, kept %v",
		purgeNamespace, p.interval, p.retention)
}

// buildPurgeLog records the cache's purges in the replicated collection
// when there is a Mongo layer to keep them (without it a purge reaches
// only the nodes that are up), and says when the collection cannot
// replicate.
func (n *Node) buildPurgeLog(cp *cdnPart, mp *mongoPart) (*purgeLog, error) {
	if cp == nil || mp == nil {
		return nil, nil
	}
	for i, pat := range n.cfg.Mongo.LocalOnly {
		if ok, _ := path.Match(pat, purgeNamespace); ok {
			n.log.Warn("cache purges reach only the nodes that are up when they are issued: mongo.local_only keeps the collection of purges from replicating",
				"key", fmt.Sprintf("mongo.local_only[%d]", i), "pattern", pat, "collection", purgeNamespace)
			return nil, nil
		}
	}
	c := n.cfg.CDN
	p := &purgeLog{
		cache: cp.cache, mongo: mp, cfg: &n.cfg, log: n.log.With("part", "cdn-purges"),
		interval: purgeInterval, gcEvery: purgeGCEvery,
		retention: max(purgeMinRetain, 2*(c.TTL+max(c.StaleWhileRevalidate, 0))),
		done:      make(chan struct{}),
	}
	p.met = purgeMetrics{
		records: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_cdn_purge_log_records",
			Help: "Cache purges in the replicated purge log at its last read."}),
		applied: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_cdn_purge_log_applied_total",
			Help: "Purges from the replicated purge log that forgot a copy here: purges this node missed when they were issued (it was down or cut off)."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_cdn_purge_log_errors_total",
			Help: "Failed operations on the replicated purge log, by operation: record (the admin route answered 503), read, gc."}, []string{"op"}),
	}
	for _, op := range []string{"record", "read", "gc"} {
		p.met.errors.WithLabelValues(op)
	}
	for _, col := range []prometheus.Collector{p.met.records, p.met.applied, p.met.errors} {
		if err := n.reg.Register(col); err != nil {
			return nil, fmt.Errorf("cdn purges: register metrics: %w", err)
		}
	}
	cp.cache.OnPurge(p.record)
	return p, nil
}

// Start connects to the proxy, which has started, and starts reading the
// log; the first read applies every purge this node has not.
func (p *purgeLog) Start(context.Context) error {
	proxy, err := p.mongo.Proxy()
	if err != nil {
		return fmt.Errorf("cdn purges: %w", err)
	}
	opts, err := fleetMongoOptions(p.cfg, proxy)
	if err != nil {
		return err
	}
	if p.client, err = mongo.Connect(opts.SetAppName("edgenode-cdn-purges")); err != nil {
		return fmt.Errorf("cdn purges: %w", err)
	}
	db, coll, _ := strings.Cut(purgeNamespace, ".")
	p.coll.Store(p.client.Database(db).Collection(coll))
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() {
		defer close(p.done)
		p.run(ctx)
	}()
	return nil
}

func (p *purgeLog) Stop(ctx context.Context) error {
	if p.cancel == nil {
		return nil
	}
	p.cancel()
	<-p.done
	return p.client.Disconnect(ctx)
}

// errPurgeLogDown is the route's answer before the log is up.
var errPurgeLogDown = errors.New("the purge is not recorded for the nodes that are down: the purge log is not up yet")

// record is the cache's purge hook: the purge is stored for the nodes that
// miss the mesh's fan-out. Its time is rounded up to the database's
// millisecond, so that it still covers the copies this node just dropped.
func (p *purgeLog) record(ctx context.Context, key string, at time.Time) error {
	coll := p.coll.Load()
	if coll == nil {
		p.met.errors.WithLabelValues("record").Inc()
		return errPurgeLogDown
	}
	ms := at.Truncate(time.Millisecond)
	if ms.Before(at) {
		ms = ms.Add(time.Millisecond)
	}
	rec := purgeRecord{ID: bson.NewObjectID(), Key: key, At: ms.UTC(), Node: p.cfg.Node.ID}
	if _, err := coll.InsertOne(ctx, rec); err != nil {
		p.met.errors.WithLabelValues("record").Inc()
		return fmt.Errorf("the purge is not recorded for the nodes that are down: %w", err)
	}
	return nil
}

// run reads the log every interval and applies what is new, and deletes
// old records every gcEvery.
func (p *purgeLog) run(ctx context.Context) {
	applied := map[bson.ObjectID]bool{}
	failing := false
	var lastGC time.Time
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		err := p.apply(ctx, applied)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			p.met.errors.WithLabelValues("read").Inc()
			if !failing {
				p.log.Warn("cannot read the purge log; retrying", "err", err)
			}
			failing = true
		default:
			if failing {
				p.log.Info("purge log readable again")
			}
			failing = false
			if time.Since(lastGC) >= p.gcEvery {
				lastGC = time.Now()
				p.gc(ctx)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// apply reads every record and applies those not in applied (which it
// then holds exactly the records read).
func (p *purgeLog) apply(ctx context.Context, applied map[bson.ObjectID]bool) error {
	ctx, cancel := context.WithTimeout(ctx, max(p.interval, 10*time.Second))
	defer cancel()
	cur, err := p.coll.Load().Find(ctx, bson.D{})
	if err != nil {
		return err
	}
	defer cur.Close(ctx)
	seen := make(map[bson.ObjectID]bool, len(applied))
	for cur.Next(ctx) {
		var r purgeRecord
		if err := cur.Decode(&r); err != nil {
			return fmt.Errorf("purge record: %w", err)
		}
		seen[r.ID] = true
		if applied[r.ID] {
			continue
		}
		applied[r.ID] = true
		dropped, err := p.cache.PurgeBefore(r.Key, r.At)
		if err != nil {
			p.log.Warn("ignoring a purge record", "id", r.ID.Hex(), "key", r.Key, "err", err)
			continue
		}
		if dropped {
			p.met.applied.Inc()
			p.log.Info("applied a purge this node missed", "key", r.Key, "at", r.At, "by", r.Node)
		}
	}
	if err := cur.Err(); err != nil {
		return err
	}
	for id := range applied {
		if !seen[id] {
			delete(applied, id)
		}
	}
	p.met.records.Set(float64(len(seen)))
	return nil
}

// gc deletes the records older than the retention.
func (p *purgeLog) gc(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cutoff := time.Now().Add(-p.retention).UTC()
	res, err := p.coll.Load().DeleteMany(ctx, bson.D{{Key: "at", Value: bson.D{{Key: "$lt", Value: cutoff}}}})
	if err != nil {
		if ctx.Err() == nil {
			p.met.errors.WithLabelValues("gc").Inc()
			p.log.Warn("cannot delete old purge records; retrying later", "err", err)
		}
		return
	}
	if res.DeletedCount > 0 {
		p.log.Info("deleted old purge records", "records", res.DeletedCount, "older_than", p.retention)
	}
}
