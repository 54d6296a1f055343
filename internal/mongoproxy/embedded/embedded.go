// Package embedded runs FerretDB v1 (SQLite backend) inside the process, as
// the local database of a single node when no MongoDB upstream is configured,
// and for tests. It speaks the real MongoDB wire protocol on a Unix socket.
//
// The database has no authentication and sits behind the node's Mongo proxy,
// which captures every write for replication and guards the fleet's
// reserved namespaces. A TCP port, even on loopback, would let any local
// account write to it directly, bypassing both. The socket is reachable by
// this account only: it is made 0600 in a directory of mode 0700 (see
// socketDir for where that directory is).
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
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"
)

// Server is a running embedded FerretDB.
type Server struct {
	dir    string
	uri    string
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	// tmpDir is the socket's directory when it is a temporary one (see
	// socketDir), removed by Stop.
	tmpDir string
}

// socketName is the socket's file name. The proxy and the driver take a
// host ending in ".sock" for a Unix socket.
const socketName = "ferretdb.sock"

// maxSocketPath is the longest socket path a sockaddr_un holds with its
// terminating NUL (108 bytes of sun_path on Linux).
const maxSocketPath = 107

// Start creates dir if needed and starts FerretDB listening on a Unix
// socket only this account can reach, with its SQLite files in dir. It
// returns once the listener is bound; Stop (or cancelling ctx) shuts it
// down. A socket left in place by a crash is replaced; a server already
// running on dir is an error.
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
	sockDir, tmp, err := socketDir(abs)
	if err != nil {
		return nil, fmt.Errorf("embedded ferretdb: %w", err)
	}
	removeTmp := func() {
		if tmp {
			os.RemoveAll(sockDir)
		}
	}
	sock := filepath.Join(sockDir, socketName)
	if err := clearStaleSocket(sock, abs); err != nil {
		removeTmp()
		return nil, fmt.Errorf("embedded ferretdb: %w", err)
	}
	fl := slog.New(errorOnly{log.Handler()}).With("component", "ferretdb")
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{Unix: sock},
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/?_pragma=synchronous(normal)",
		Logger:    fl,
	})
	if err != nil {
		removeTmp()
		return nil, fmt.Errorf("embedded ferretdb: %w", err)
	}
	// The directory (0700) already keeps everyone else out; the socket's
	// own mode says the same to whoever looks.
	chmodErr := os.Chmod(sock, 0o600)
	runCtx, cancel := context.WithCancel(ctx)
	s := &Server{cancel: cancel, done: make(chan struct{}), dir: abs, uri: socketURI(sock)}
	if tmp {
		s.tmpDir = sockDir
	}
	indexed := make(chan struct{})
	go func() {
		defer close(s.done)
		if err := f.Run(runCtx); err != nil && !errors.Is(err, context.Canceled) {
			log.Error("embedded ferretdb stopped", "err", err)
		}
		<-indexed
		if s.tmpDir != "" {
			os.RemoveAll(s.tmpDir)
		}
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
	if chmodErr != nil {
		s.Stop()
		return nil, fmt.Errorf("embedded ferretdb: socket: %w", chmodErr)
	}
	log.Info("embedded ferretdb started", "uri", s.uri, "dir", abs)
	return s, nil
}

// socketDir makes the private directory (mode 0700) for the socket:
// dir/sock, or, when the socket's path there would not fit a sockaddr_un
// (a deep data folder), a new directory under os.TempDir() made by
// os.MkdirTemp (mode 0700, a name nobody can take first, in a sticky
// folder), which is as private and is removed by Stop. tmp reports the
// latter.
func socketDir(dataDir string) (dir string, tmp bool, err error) {
	dir = filepath.Join(dataDir, "sock")
	if fits(filepath.Join(dir, socketName)) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", false, fmt.Errorf("socket directory: %w", err)
		}
		// MkdirAll keeps an existing directory's mode, and the umask
		// may have narrowed a new one's: either way, 0700 exactly.
		if err := os.Chmod(dir, 0o700); err != nil {
			return "", false, fmt.Errorf("socket directory: %w", err)
		}
		return dir, false, nil
	}
	long := filepath.Join(dir, socketName)
	dir, err = os.MkdirTemp("", "edgenode-db-")
	if err != nil {
		return "", false, fmt.Errorf("socket path %s is longer than a Unix socket allows (%d bytes); a temporary directory for it: %w", long, maxSocketPath, err)
	}
	if !fits(filepath.Join(dir, socketName)) {
		os.Remove(dir)
		return "", false, fmt.Errorf("socket path %s is longer than a Unix socket allows (%d bytes), and so is %s: use a shorter node.data_dir or TMPDIR",
			long, maxSocketPath, filepath.Join(dir, socketName))
	}
	return dir, true, nil
}

// fits reports whether path can be a socket's address and, written in a
// mongodb:// URI, reads back as itself (a host with a ":" or "," would not).
func fits(path string) bool {
	if len(path) > maxSocketPath {
		return false
	}
	cs, err := connstring.Parse(socketURI(path))
	return err == nil && len(cs.Hosts) == 1 && cs.Hosts[0] == path
}

// socketURI is the mongodb:// URI of the socket at path: its path is the
// host, escaped (the driver unescapes hosts with url.QueryUnescape).
func socketURI(path string) string {
	return "mongodb://" + url.QueryEscape(path) + "/"
}

// clearStaleSocket removes a socket left at path by a server that is gone
// (a crash), so that listening there succeeds, and refuses to take the
// place of one that answers.
func clearStaleSocket(path, dataDir string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("another process serves the database in %s (its socket %s answers)", dataDir, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	return os.Remove(path)
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

// URI is the mongodb:// URI of the server: its Unix socket, escaped, as
// host ("mongodb://%2Fdata%2Fmongo%2Fsock%2Fferretdb.sock/").
func (s *Server) URI() string { return s.uri }

// Stop shuts FerretDB down and waits for it to close its connections and
// files. Closing the listener removes the socket (and a temporary socket
// directory goes with it).
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
