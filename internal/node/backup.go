package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
	"github.com/edgenode/edgenode/internal/mongoproxy/repl"
	"github.com/edgenode/edgenode/internal/replica"
)

// backupHandler serves the replica's backup stream (package backup) on
// the admin listener, behind the admin token.
func (p *mongoPart) backupHandler() *backup.Handler {
	return &backup.Handler{
		Node: p.cfg.Node.ID,
		Log:  p.log.With("part", "mongo-backup"),
		Source: func() (backup.Source, error) {
			px := p.up.Load()
			if px == nil {
				return nil, errors.New("the Mongo proxy is not running")
			}
			return px.Replica(), nil
		},
	}
}

// AdminEndpoint is where a command-line tool reaches the node that cfg
// describes: the admin listener's URL (a wildcard address becomes
// loopback) and the admin token (admin.token, or the one the node made in
// DATA_DIR/publish.secret; nothing is created).
func AdminEndpoint(cfg *config.Config) (url, token string, err error) {
	host, port, err := net.SplitHostPort(cfg.Admin.Listen)
	if err != nil {
		return "", "", fmt.Errorf("admin.listen: %w", err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	url = "http://" + net.JoinHostPort(host, port)
	if !cfg.Admin.Token.IsZero() {
		token, err = cfg.Admin.Token.Resolve()
		if err != nil {
			return "", "", fmt.Errorf("admin.token: %w", err)
		}
		return url, strings.TrimSpace(token), nil
	}
	file := filepath.Join(cfg.Node.DataDir, "publish.secret")
	b, err := os.ReadFile(file)
	if err != nil {
		return "", "", fmt.Errorf("admin token: %w (set admin.token, or run this where the node's data folder is readable)", err)
	}
	return url, strings.TrimSpace(string(b)), nil
}

// RestoreMongo opens the Mongo layer of the stopped node cfg describes —
// its database (embedded FerretDB in DATA_DIR/mongo, or mongo.upstream)
// and its replica core under a new incarnation — without replication and
// without clients (the proxy listens on a loopback port of its own, with
// writes held), and calls load with the core. The data folder must hold no
// op log: restore seeds a new or wiped node. When load fails, the op log
// and origin it created are removed again, so the folder is a wiped node's
// once more (whatever was stored in the database is emptied by the next
// restore or initial sync).
func RestoreMongo(ctx context.Context, cfg *config.Config, log *slog.Logger, load func(ctx context.Context, core *replica.Replica) error) (origin string, err error) {
	if !cfg.Mongo.Enabled {
		return "", errors.New("mongo.enabled is false: this node has no Mongo layer to restore")
	}
	dir := cfg.Node.DataDir
	oplogPath, originPath := filepath.Join(dir, "oplog.db"), filepath.Join(dir, "mongo-origin")
	for _, f := range []string{oplogPath, originPath} {
		if _, err := os.Stat(f); err == nil {
			return "", fmt.Errorf("%s exists: the data folder %s belongs to a node that has run; restore seeds only a new or wiped node (stop the node and move the folder away first)", f, dir)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("node.data_dir: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(oplogPath)
			_ = os.Remove(originPath)
		}
	}()
	upstream, err := cfg.Mongo.Upstream.Resolve()
	if err != nil {
		return "", fmt.Errorf("mongo.upstream: %w", err)
	}
	var syncDB func() error
	if upstream == "" {
		mdir := filepath.Join(dir, "mongo")
		if err := os.MkdirAll(mdir, 0o750); err != nil {
			return "", err
		}
		db, err := embedded.Start(context.WithoutCancel(ctx), mdir, log.With("part", "ferretdb"))
		if err != nil {
			return "", err
		}
		defer db.Stop()
		upstream, syncDB = db.URI(), db.Sync
	}
	origin, err = repl.Incarnation(dir, cfg.Node.ID)
	if err != nil {
		return "", err
	}
	c := cfg.Mongo
	proxy, err := mongoproxy.New(mongoproxy.Options{
		Listen:           "127.0.0.1:0",
		Upstream:         upstream,
		NodeID:           origin,
		DataDir:          dir,
		Replicate:        replicatedNamespaces(cfg),
		LocalOnly:        c.LocalOnly,
		MaxDocumentBytes: int(c.MaxDocumentBytes),
		HoldWrites:       "restore in progress",
		SyncDatabase:     syncDB,
		MaxClockSkew:     c.MaxClockSkew,
	}, log.With("part", "mongo"), nil)
	if err != nil {
		return "", err
	}
	if err := proxy.Start(ctx); err != nil {
		return "", err
	}
	err = load(ctx, proxy.Replica())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if serr := proxy.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return "", err
	}
	return origin, nil
}
