package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/archive"
	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
	"github.com/edgenode/edgenode/internal/mongoproxy/repl"
)

// embeddedDB is the local database when mongo.upstream is empty: FerretDB
// on SQLite in DATA_DIR/mongo, reached on a Unix socket.
type embeddedDB struct {
	dir string
	log *slog.Logger
	db  *embedded.Server // set by Start
}

func (p *embeddedDB) Name() string   { return "mongo-db" }
func (p *embeddedDB) Detail() string { return "embedded FerretDB (SQLite) in " + p.dir }

// Start starts the database. It lives until Stop: ending the context
// embedded.Start is given would stop it.
func (p *embeddedDB) Start(ctx context.Context) error {
	if err := os.MkdirAll(p.dir, 0o750); err != nil {
		return err
	}
	db, err := embedded.Start(context.WithoutCancel(ctx), p.dir, p.log)
	if err != nil {
		return err
	}
	p.db = db
	return nil
}

func (p *embeddedDB) Stop(context.Context) error {
	if p.db != nil {
		p.db.Stop()
	}
	return nil
}

// started is the running database, for the Mongo part that starts after
// it: its URI and its Sync (see embedded.Server.Sync).
func (p *embeddedDB) started() (*embedded.Server, error) {
	if p.db == nil {
		return nil, errors.New("the embedded database (mongo-db) has not started: it must start before the mongo part")
	}
	return p.db, nil
}

// mongoPart is the Mongo wire-protocol proxy that captures writes as ops,
// and the replicator that carries them to and from the peers. The proxy is
// made at Start, once the database's address is known.
type mongoPart struct {
	cfg      *config.Config
	upstream string      // mongo.upstream; "" with db
	db       *embeddedDB // nil with an upstream
	mesh     *meshPart   // nil without a mesh: replication runs standalone
	log      *slog.Logger
	reg      prometheus.Registerer
	detail   string

	proxy *mongoproxy.Proxy                // set by a Start that succeeded
	arch  *archive.Archiver                // set by Start with mongo.archive.target
	rep   atomic.Pointer[repl.Replicator]  // read by the admin routes too
	up    atomic.Pointer[mongoproxy.Proxy] // proxy, for the readiness check
}

func (p *mongoPart) Name() string   { return "mongo" }
func (p *mongoPart) Detail() string { return p.detail }

// Proxy is the running proxy, for the parts that start after this one.
func (p *mongoPart) Proxy() (*mongoproxy.Proxy, error) {
	if p.proxy == nil {
		return nil, errors.New("the Mongo proxy (mongo) has not started: it must start before the parts that use it")
	}
	return p.proxy, nil
}

func (p *mongoPart) Start(ctx context.Context) error {
	c := p.cfg.Mongo
	upstream := p.upstream
	var syncDB func() error
	if p.db != nil {
		db, err := p.db.started()
		if err != nil {
			return err
		}
		upstream, syncDB = db.URI(), db.Sync
	}
	// A wiped data folder gets a new origin id, so its ops never collide
	// with the ones its peers have from before.
	origin, err := repl.Incarnation(p.cfg.Node.DataDir, p.cfg.Node.ID)
	if err != nil {
		return err
	}
	replicate := replicatedNamespaces(p.cfg)
	hold := ""
	if p.mesh != nil {
		hold = "replication is starting"
	}
	proxy, err := mongoproxy.New(mongoproxy.Options{
		Listen:           c.Listen,
		Upstream:         upstream,
		Advertise:        c.Advertise,
		SetName:          c.SetName,
		NodeID:           origin,
		DataDir:          p.cfg.Node.DataDir,
		Replicate:        replicate,
		LocalOnly:        c.LocalOnly,
		MaxConns:         c.MaxConns,
		MaxDocumentBytes: int(c.MaxDocumentBytes),
		DocCacheBytes:    docCacheBytes(&c),
		HoldWrites:       hold,
		SyncDatabase:     syncDB,
		MaxClockSkew:     c.MaxClockSkew,
		MessageTimeout:   c.ClientMessageTimeout,
		IdleTimeout:      clientIdleTimeout(&c),
		RetryRecordBytes: retryRecordsBytes(&c),
	}, p.log.With("part", "mongo"), p.reg)
	if err != nil {
		return err
	}
	if err := proxy.Start(ctx); err != nil {
		return err
	}
	opts := replOptions(p.cfg)
	if p.mesh != nil {
		opts.Transport = meshTransport{p.mesh.m}
	}
	var arch *archive.Archiver
	if c.Archive.Target != "" {
		// The archiver's position holds back the op log's trimming from
		// the start: nothing leaves the log unarchived.
		arch, err = p.startArchive(ctx, proxy.Replica())
		if err == nil {
			opts.TrimFloor = arch.Floor
		}
	}
	var r *repl.Replicator
	if err == nil {
		r, err = repl.New(opts, proxy.Replica(), p.log.With("part", "mongo-repl"), p.reg)
	}
	if err == nil {
		err = r.Start(ctx)
	}
	if err != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if arch != nil {
			_ = arch.Stop(sctx)
		}
		_ = proxy.Shutdown(sctx)
		return err
	}
	p.arch = arch
	p.rep.Store(r)
	p.proxy = proxy
	p.up.Store(proxy)
	return nil
}

// Stop stops replication, then the proxy (which closes the op log
// replication reads). A stop, not a drain: the app server's requests in
// flight may need the database while HTTPS drains.
func (p *mongoPart) Stop(ctx context.Context) error {
	var errs []error
	if r := p.rep.Swap(nil); r != nil {
		errs = append(errs, r.Stop(ctx))
	}
	p.up.Store(nil)
	if p.arch != nil {
		// Before the proxy closes the op log it reads.
		errs = append(errs, p.arch.Stop(ctx))
	}
	if p.proxy != nil {
		errs = append(errs, p.proxy.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// replicatedNamespaces is mongo.replicate plus the node's own replicated
// collections.
func replicatedNamespaces(cfg *config.Config) []string {
	replicate := cfg.Mongo.Replicate
	if cfg.FleetStore() == config.FleetStorageMongo {
		// The fleet's TLS material replicates whatever the operator chose
		// for the app (config validation keeps it out of local_only).
		replicate = append(slices.Clip(replicate), config.FleetNamespace)
	}
	if cfg.CDN.Enabled {
		replicate = append(slices.Clip(replicate), purgeNamespace) // see purgeLog
	}
	return replicate
}

// statusJSON serves the replication status; 503 while stopped.
func (p *mongoPart) statusJSON(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	r := p.rep.Load()
	if r == nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"state":"stopped"}`))
		return
	}
	_ = json.NewEncoder(w).Encode(r.Status())
}

// ready is the admin readiness check: a replica that is not synced yet,
// or lags past mongo.max_lag behind an alive peer, is not ready, so load
// balancers and DNS health checks move clients to a fresher node (it still
// accepts writes; see package repl).
func (p *mongoPart) ready() error {
	if px := p.up.Load(); px != nil {
		// A database without a primary takes no writes: send clients to
		// a node whose database does.
		if err := px.Ready(); err != nil {
			return err
		}
	}
	if r := p.rep.Load(); r != nil {
		return r.Ready()
	}
	return nil
}

// buildMongo builds the local database (embedded FerretDB when no upstream
// is configured; db is then nil) and the proxy in front of it.
func (n *Node) buildMongo(mp *meshPart) (db *embeddedDB, _ *mongoPart, _ error) {
	c := n.cfg.Mongo
	upstream, err := c.Upstream.Resolve()
	if err != nil {
		return nil, nil, fmt.Errorf("mongo.upstream: %w", err)
	}
	if upstream == "" {
		db = &embeddedDB{dir: filepath.Join(n.cfg.Node.DataDir, "mongo"), log: n.log.With("part", "ferretdb")}
	}
	detail := "Mongo wire-protocol proxy on " + c.Listen + " (multi-master capture of writes)"
	if mp != nil {
		detail += ", replicated over the mesh"
	}
	p := &mongoPart{cfg: &n.cfg, upstream: upstream, db: db, mesh: mp, log: n.log, reg: n.reg, detail: detail}
	n.admin.Handle("GET /mongo/status.json", http.HandlerFunc(p.statusJSON))
	p.routeConflicts(n.admin.Handle)
	n.admin.AddCheck("mongo replication", p.ready)
	n.admin.Handle("GET /v1/mongo/backup", p.backupHandler())
	return db, p, nil
}

// replOptions translates the replication keys of the mongo section; see
// none for their zeros.
func replOptions(cfg *config.Config) repl.Options {
	o := repl.Options{
		NodeID:          cfg.Node.ID,
		MaxLag:          none(cfg.Mongo.MaxLag),
		LogRetention:    none(cfg.Mongo.LogRetention),
		ForgetPeerAfter: cfg.Mongo.ForgetPeerAfter,
	}
	// A node with seeds belongs to a cluster: new or wiped, it waits for a
	// peer rather than start a cluster of its own, unless told it is the
	// first (mongo.bootstrap).
	if cfg.Mesh.Enabled && !cfg.Mongo.Bootstrap {
		o.Seeds = otherSeeds(&cfg.Mesh)
		o.RequirePeer = len(o.Seeds) > 0
	}
	return o
}

// otherSeeds are mesh.seeds without this node's own gossip address (a
// config shared by every node may list them all).
func otherSeeds(m *config.Mesh) []string {
	var out []string
	for _, s := range m.Seeds {
		if s != m.Bind && s != m.Advertise {
			out = append(out, s)
		}
	}
	return out
}

// clientIdleTimeout is mongo.client_idle_timeout in the proxy's terms (its
// 0 is the default, a negative value never closes).
func clientIdleTimeout(c *config.Mongo) time.Duration { return none(c.ClientIdleTimeout) }

// docCacheBytes is mongo.doc_cache_bytes for the proxy (0 there: none).
func docCacheBytes(c *config.Mongo) int64 { return none(int64(c.DocCacheBytes)) }

func retryRecordsBytes(c *config.Mongo) int64 {
	if c.RetryRecordsBytes == 0 {
		return -1
	}
	return int64(c.RetryRecordsBytes)
}

// meshTransport is the mesh as replication's transport: the mesh's send
// errors become the ones package repl documents.
type meshTransport struct{ *mesh.Mesh }

func (t meshTransport) Send(node, topic string, msg []byte) error {
	err := t.Mesh.Send(node, topic, msg)
	switch {
	case errors.Is(err, mesh.ErrQueueFull):
		return fmt.Errorf("%w: %w", repl.ErrQueueFull, err)
	case errors.Is(err, mesh.ErrTooLarge):
		return fmt.Errorf("%w: %w", repl.ErrTooLarge, err)
	}
	return err
}

// archiveOptions are mongo.archive in package archive's terms (no store).
func archiveOptions(cfg *config.Config) archive.Options {
	a := cfg.Mongo.Archive
	return archive.Options{
		Node:            cfg.Node.ID,
		SegmentBytes:    int(a.SegmentBytes),
		SegmentInterval: a.SegmentInterval,
		BaseInterval:    a.BaseInterval,
		Retention:       a.Retention, // 0 keeps everything there too
	}
}

// OpenArchive opens the store mongo.archive.target names (loc overrides
// it when not empty).
func OpenArchive(ctx context.Context, cfg *config.Config, loc string) (archive.Store, error) {
	a := cfg.Mongo.Archive
	if loc == "" {
		loc = a.Target
	}
	if loc == "" {
		return nil, errors.New("no archive: set mongo.archive.target (or give its location)")
	}
	o := backup.S3Options{Endpoint: a.S3.Endpoint, Region: a.S3.Region, PathStyle: a.S3.PathStyle}
	var err error
	if o.AccessKeyID, err = a.S3.AccessKeyID.Resolve(); err != nil {
		return nil, fmt.Errorf("mongo.archive.s3.access_key_id: %w", err)
	}
	if o.SecretAccessKey, err = a.S3.SecretAccessKey.Resolve(); err != nil {
		return nil, fmt.Errorf("mongo.archive.s3.secret_access_key: %w", err)
	}
	return archive.Open(ctx, loc, o)
}

func (p *mongoPart) startArchive(ctx context.Context, src archive.Source) (*archive.Archiver, error) {
	st, err := OpenArchive(ctx, p.cfg, "")
	if err != nil {
		return nil, fmt.Errorf("mongo.archive: %w", err)
	}
	o := archiveOptions(p.cfg)
	o.Store, o.Log = st, p.log.With("part", "mongo-archive")
	a, err := archive.New(o, src, p.reg)
	if err != nil {
		return nil, fmt.Errorf("mongo.archive: %w", err)
	}
	if err := a.Start(ctx); err != nil {
		return nil, fmt.Errorf("mongo.archive: %w", err)
	}
	return a, nil
}
