package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
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
	n.parts = append(n.parts, &part{
		name:   "mongo",
		detail: "Mongo wire-protocol proxy on " + c.Listen + " (multi-master capture of writes)",
		start: func(ctx context.Context) error {
			var err error
			proxy, err = mongoproxy.New(mongoproxy.Options{
				Listen:    c.Listen,
				Upstream:  upstream,
				NodeID:    n.cfg.Node.ID,
				DataDir:   n.cfg.Node.DataDir,
				Replicate: c.Replicate,
				LocalOnly: c.LocalOnly,
				MaxConns:  c.MaxConns,
			}, n.log.With("part", "mongo"), n.reg)
			if err != nil {
				return err
			}
			return proxy.Start(ctx)
		},
		// A stop, not a drain: the app server's in-flight requests may still
		// need the database while the HTTPS side drains.
		stop: func(ctx context.Context) error {
			if proxy == nil {
				return nil
			}
			return proxy.Shutdown(ctx)
		},
	})
	return nil
}
