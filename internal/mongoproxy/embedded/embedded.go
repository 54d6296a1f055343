// Package embedded runs FerretDB v1 (SQLite backend) inside the process, as
// the local database of a single node when no MongoDB upstream is configured,
// and for tests. It speaks the real MongoDB wire protocol on a loopback port.
//
// FerretDB logs every error reply at its default level, which floods the log
// with ordinary client mistakes (duplicate keys, unknown commands), so the
// logger handed to it only passes ERROR records.
//
// FerretDB v1's own _id index cannot serve its lookups by _id (see
// idindex.go), so every lookup scanned the collection; the server adds the
// index those lookups need to every collection table, outside FerretDB's
// knowledge, within a second of the table's creation.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// Server is a running embedded FerretDB.
type Server struct {
	dir    string
	uri    string
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Start creates dir if needed and starts FerretDB listening on a random
// loopback port with its SQLite files in dir. It returns once the listener is
// bound; Stop (or cancelling ctx) shuts it down.
func Start(ctx context.Context, dir string, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("embedded ferretdb: data dir %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, fmt.Errorf("embedded ferretdb: creating data dir: %w", err)
	}
	fl := slog.New(errorOnly{log.Handler()}).With("component", "ferretdb")
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/?_pragma=synchronous(normal)",
		Logger:    fl,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded ferretdb: %w", err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	s := &Server{cancel: cancel, done: make(chan struct{}), dir: abs}
	indexed := make(chan struct{})
	go func() {
		defer close(s.done)
		if err := f.Run(runCtx); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("embedded ferretdb stopped", "err", err)
		}
		<-indexed
	}()
	// See idindex.go: the _id lookup index FerretDB v1 lacks.
	go func() {
		defer close(indexed)
		t := time.NewTicker(indexInterval)
		defer t.Stop()
		for {
			indexTables(runCtx, abs, log)
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
			}
		}
	}()
	// The listener is bound in ferretdb.New, so the URI is available now.
	s.uri = f.MongoDBURI()
	log.Info("embedded ferretdb started", "uri", s.uri, "dir", abs)
	return s, nil
}

// Sync makes every write the server has completed durable: it fsyncs
// every database file and its write-ahead log. The server runs SQLite in
// WAL mode with synchronous=NORMAL: a commit is written but not fsync'd,
// which survives a crash of the process but not of the machine, and about
// doubles the write rate (measured here: ReplaceOne by _id 630/s -> 1,270/s).
// The proxy calls Sync before its op log forgets that an op still needs
// applying (mongoproxy.Options.SyncDatabase), so a power loss only makes
// it apply again what the database lost.
func (s *Server) Sync() error {
	files, err := filepath.Glob(filepath.Join(s.dir, "*.sqlite"))
	if err != nil {
		return err
	}
	for _, f := range files {
		for _, name := range []string{f + "-wal", f} {
			if err := fsyncFile(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("embedded ferretdb: sync %s: %w", name, err)
			}
		}
	}
	return fsyncFile(s.dir)
}

func fsyncFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// URI is the mongodb:// URI of the server.
func (s *Server) URI() string { return s.uri }

// Stop shuts FerretDB down and waits for it to close its connections and files.
func (s *Server) Stop() {
	s.once.Do(func() {
		s.cancel()
		<-s.done
	})
}

// errorOnly passes only ERROR and above to the wrapped handler.
type errorOnly struct{ slog.Handler }

func (h errorOnly) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelError && h.Handler.Enabled(ctx, l)
}

func (h errorOnly) WithAttrs(a []slog.Attr) slog.Handler { return errorOnly{h.Handler.WithAttrs(a)} }
func (h errorOnly) WithGroup(n string) slog.Handler      { return errorOnly{h.Handler.WithGroup(n)} }
