package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
	"github.com/edgenode/edgenode/internal/mongoproxy/repl"
)

// buildMongo adds the local database (embedded FerretDB when no upstream is
// configured) and the proxy in front of it. The proxy is built at start,
// once the embedded database's address is known.
func (n *Node) buildMongo() error {
	c := n.cfg.Mongo
	upstream, err := c.Upstream.Resolve()
	if err != nil {
		return fmt.Errorf("mongo.upstream: %w", err)
	}
	var syncDB func() error // set with the embedded database, see embedded.Server.Sync
	if upstream == "" {
		var db *embedded.Server
		dir := filepath.Join(n.cfg.Node.DataDir, "mongo")
		n.parts = append(n.parts, &part{
			name:   "mongo-db",
			detail: "embedded FerretDB (SQLite) in " + dir,
			start: func(ctx context.Context) error {
				if err := os.MkdirAll(dir, 0o750); err != nil {
					return err
				}
				var err error
				db, err = embedded.Start(ctx, dir, n.log.With("part", "ferretdb"))
				if err != nil {
					return err
				}
				upstream = db.URI()
				syncDB = db.Sync
				return nil
			},
			stop: func(context.Context) error {
				if db != nil {
					db.Stop()
				}
				return nil
			},
		})
	}
	var proxy *mongoproxy.Proxy
	var rep atomic.Pointer[repl.Replicator]
	detail := "Mongo wire-protocol proxy on " + c.Listen + " (multi-master capture of writes)"
	if n.mesh != nil {
		detail += ", replicated over the mesh"
	}
	n.admin.Handle("GET /mongo/status.json", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		r := rep.Load()
		if r == nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"state":"stopped"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(r.Status())
	}))
	// A replica that is not synced yet, or lags past mongo.max_lag behind an
	// alive peer, is not ready: load balancers and DNS health checks move
	// clients to a fresher node (it still accepts writes; see package repl).
	n.admin.AddCheck("mongo replication", func() error {
		if r := rep.Load(); r != nil {
			return r.Ready()
		}
		return nil
	})
	n.parts = append(n.parts, &part{
		name:   "mongo",
		detail: detail,
		start: func(ctx context.Context) error {
			// A wiped data folder gets a new origin id, so its ops never
			// collide with the ones its peers have from before.
			origin, err := repl.Incarnation(n.cfg.Node.DataDir, n.cfg.Node.ID)
			if err != nil {
				return err
			}
			replicate := c.Replicate
			if n.cfg.FleetStore() == config.FleetStorageMongo {
				// The fleet's TLS material replicates whatever the
				// operator chose for the app (config validation keeps it
				// out of local_only).
				replicate = append(slices.Clip(replicate), config.FleetNamespace)
			}
			hold := ""
			if n.mesh != nil {
				hold = "replication is starting"
			}
			proxy, err = mongoproxy.New(mongoproxy.Options{
				Listen:           c.Listen,
				Upstream:         upstream,
				NodeID:           origin,
				DataDir:          n.cfg.Node.DataDir,
				Replicate:        replicate,
				LocalOnly:        c.LocalOnly,
				MaxConns:         c.MaxConns,
				MaxDocumentBytes: int(c.MaxDocumentBytes),
				MaxClockSkew:     c.MaxClockSkew,
				HoldWrites:       hold,
				SyncDatabase:     syncDB,
				MessageTimeout:   c.ClientMessageTimeout,
				IdleTimeout:      idleTimeout(c.ClientIdleTimeout),
			}, n.log.With("part", "mongo"), n.reg)
			if err != nil {
				return err
			}
			if err := proxy.Start(ctx); err != nil {
				return err
			}
			opts := repl.Options{
				NodeID:          n.cfg.Node.ID,
				MaxLag:          c.MaxLag,
				LogRetention:    c.LogRetention,
				ForgetPeerAfter: c.ForgetPeerAfter,
			}
			if c.MaxLag == 0 {
				opts.MaxLag = -1 // the config's 0 means "never"; the package's 0 means "default"
			}
			if n.mesh != nil {
				opts.Transport = meshTransport{n.mesh}
			}
			r, err := repl.New(opts, proxy.Replica(), n.log.With("part", "mongo-repl"), n.reg)
			if err == nil {
				err = r.Start(ctx)
			}
			if err != nil {
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_ = proxy.Shutdown(sctx)
				return err
			}
			rep.Store(r)
			n.mongoProxy = proxy
			return nil
		},
		// A stop, not a drain: the app server's in-flight requests may still
		// need the database while the HTTPS side drains. Replication stops
		// first: the proxy closes the op log it reads.
		stop: func(ctx context.Context) error {
			var errs []error
			if r := rep.Swap(nil); r != nil {
				errs = append(errs, r.Stop(ctx))
			}
			if proxy != nil {
				errs = append(errs, proxy.Shutdown(ctx))
			}
			return errors.Join(errs...)
		},
	})
	return nil
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

// idleTimeout maps mongo.client_idle_timeout (0: never) to the proxy's
// option (0: its default, negative: never).
func idleTimeout(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
