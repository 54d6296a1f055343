package testkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// A real external database for the Mongo layer's tests: PostgreSQL (Debian's
// postgresql package, whichever version is under /usr/lib/postgresql) as its
// own server process, and FerretDB 1.24.2 over it as a process of its own.
// Everything runs on this machine: PostgreSQL listens only on a Unix socket
// in its temporary folder, FerretDB on a free 127.0.0.1 port.
//
// The server runs with fsync=off, synchronous_commit=off and
// full_page_writes=off, and initdb with --no-sync: a test's data need not
// survive a power loss, and start-up and writes are several times faster.
// A crash of the test binary still loses nothing a test relies on: those
// settings only matter when the machine itself goes down.

// pgSuperuser is the superuser initdb creates, whatever the OS user.
const pgSuperuser = "edgenode"

// Postgres is a PostgreSQL server started for tests. Stop it when done;
// if the test binary dies instead, the kernel kills the server
// (Pdeathsig), and its backends exit when they see their postmaster gone.
type Postgres struct {
	Dir    string // data (Dir/data) and socket folder, removed by Stop
	Port   int    // names the socket (Dir/.s.PGSQL.<Port>); nothing listens on TCP
	Bin    string // folder of the server's binaries
	cmd    *exec.Cmd
	exited chan struct{}
	logs   *lockedBuffer

	stopOnce sync.Once
	stopErr  error
}

// PostgresBinDir is the folder of the newest PostgreSQL server binaries
// under /usr/lib/postgresql (Debian's layout), or of the initdb on PATH.
func PostgresBinDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(a)))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(b)))
		return vb - va
	})
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin or on PATH (apt-get install postgresql)")
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// serverCredential is who runs initdb and postgres: the current user,
// except root, which PostgreSQL refuses to run as; then the system's
// postgres user, or nobody.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("running as root and neither user postgres nor nobody exists to run PostgreSQL as")
}

// StartPostgres creates a cluster in a new temporary folder and starts its
// server. It returns once the server accepts connections.
func StartPostgres() (*Postgres, error) {
	bin, err := PostgresBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	// Under the system's temporary folder rather than a test's TempDir: its
	// parents are private to the test's user, which the server may not be,
	// and a Unix socket path must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "edgenode-pg-")
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	p := &Postgres{Dir: dir, Port: 5432, Bin: bin, logs: &lockedBuffer{}}
	if err := p.start(cred); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return p, nil
}

func (p *Postgres) start(cred *syscall.Credential) error {
	if cred != nil {
		if err := os.Chown(p.Dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("postgres: give %s to uid %d: %w", p.Dir, cred.Uid, err)
		}
	}
	data := filepath.Join(p.Dir, "data")
	initdb := exec.Command(filepath.Join(p.Bin, "initdb"), "-D", data, "-U", pgSuperuser, "--auth=trust",
		"--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("postgres: initdb %s: %w\n%s", data, err, out)
	}
	cmd := exec.Command(filepath.Join(p.Bin, "postgres"), "-D", data, "-k", p.Dir, "-p", strconv.Itoa(p.Port),
		"-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "shared_buffers=32MB", "-c", "max_connections=300")
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	// Setpgid: a Ctrl-C in the terminal reaches the test binary, which stops
	// the server in order, rather than the server directly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("postgres: start: %w", err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.exited) }()
	// postmaster.pid's status line says "ready" once connections are accepted.
	pidFile := filepath.Join(data, "postmaster.pid")
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, err := os.ReadFile(pidFile); err == nil && slices.Contains(strings.Fields(string(b)), "ready") {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("postgres: exited at start:\n%s", p.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = p.Stop()
			return fmt.Errorf("postgres: not ready after 60s:\n%s", p.logs.String())
		}
	}
}

// CreateDatabase creates database name (as createdb does).
func (p *Postgres) CreateDatabase(name string) error {
	cmd := exec.Command(filepath.Join(p.Bin, "createdb"), "-h", p.Dir, "-p", strconv.Itoa(p.Port), "-U", pgSuperuser, name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("postgres: createdb %s: %w\n%s", name, err, out)
	}
	return nil
}

// IndexIDs makes every table created in database db from now on (FerretDB
// creates one per collection) get a GIN index (jsonb_path_ops) on its
// documents' _id, by an event trigger. FerretDB 1.24 filters a query
// {_id: v} as _jsonb->'_id' @> v (containment), which the btree index it
// creates for _id cannot serve: without this, every read or write of one
// document by _id scans its whole table (measured: ~4 ms of PostgreSQL
// CPU per operation at 10,000 documents, and growing with the table).
// With it, the same operations are index scans. This is a setting of the
// database, not of edgenode: a deployment over FerretDB 1.x on
// PostgreSQL wants the same trigger (README).
func (p *Postgres) IndexIDs(db string) error {
	const sql = `CREATE FUNCTION edgenode_index_ids() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT objid, object_identity FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE' AND object_type = 'table' LOOP
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = r.objid AND attname = '_jsonb') THEN
      EXECUTE format('CREATE INDEX ON %s USING gin ((_jsonb->''_id'') jsonb_path_ops)', r.object_identity);
    END IF;
  END LOOP;
END $$;
CREATE EVENT TRIGGER edgenode_index_ids ON ddl_command_end WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION edgenode_index_ids();`
	cmd := exec.Command(filepath.Join(p.Bin, "psql"), "-h", p.Dir, "-p", strconv.Itoa(p.Port), "-U", pgSuperuser,
		"-v", "ON_ERROR_STOP=1", "-q", "-d", db, "-c", sql)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("postgres: _id index trigger in %s: %w\n%s", db, err, out)
	}
	return nil
}

// URL is the connection URL of database db, over the Unix socket, in the
// form FerretDB's --postgresql-url takes.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://%s@/%s?host=%s&port=%d", pgSuperuser, db, p.Dir, p.Port)
}

// Output is what the server has logged.
func (p *Postgres) Output() string { return p.logs.String() }

// Stop shuts the server down (fast shutdown: sessions are ended) and
// removes its folder. It may be called more than once.
func (p *Postgres) Stop() error {
	p.stopOnce.Do(func() {
		if p.cmd != nil {
			_ = p.cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-p.exited:
			case <-time.After(15 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.exited
			}
		}
		p.stopErr = os.RemoveAll(p.Dir)
	})
	return p.stopErr
}

// Ferret is a FerretDB server process. Stop it when done; if the test
// binary dies instead, the kernel kills it (Pdeathsig).
type Ferret struct {
	URI     string // mongodb://127.0.0.1:port/
	Addr    string // 127.0.0.1:port
	UnixURI string // mongodb://<escaped socket path>/: the same server
	cmd     *exec.Cmd
	exited  chan struct{}
	logs    *lockedBuffer

	stopOnce sync.Once
}

// FerretDBPath is the FerretDB server binary (see Tool). One that cannot
// print its version is passed over: `go install` builds one that panics at
// start (see scripts/install-test-tools).
func FerretDBPath() (string, error) {
	return Tool("ferretdb", func(p string) bool { return exec.Command(p, "--version").Run() == nil })
}

// StartFerretDB starts FerretDB with the PostgreSQL backend at pgURL (an
// existing database, see Postgres.CreateDatabase), its state in stateDir,
// listening on a free 127.0.0.1 port. It returns once FerretDB answers a
// command that reaches PostgreSQL.
func StartFerretDB(pgURL, stateDir string) (*Ferret, error) {
	bin, err := FerretDBPath()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("ferretdb: %w", err)
	}
	var lastErr error
	for range 5 { // a free port may be taken before FerretDB binds it
		port, err := PickPort("127.0.0.1", false)
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		// Also a Unix socket: nodes in network namespaces of their own
		// (the partition tests) share the file system, not 127.0.0.1.
		sock := filepath.Join(stateDir, "ferretdb.sock")
		_ = os.Remove(sock)
		f := &Ferret{URI: "mongodb://" + addr + "/", Addr: addr, UnixURI: "mongodb://" + url.PathEscape(sock) + "/",
			logs: &lockedBuffer{}, exited: make(chan struct{})}
		f.cmd = exec.Command(bin, "--handler=postgresql", "--postgresql-url="+pgURL,
			"--listen-addr="+addr, "--listen-unix="+sock, "--debug-addr=-", "--state-dir="+stateDir,
			"--telemetry=disable", "--log-level=error")
		f.cmd.Stdout, f.cmd.Stderr = f.logs, f.logs
		f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
		if err := f.cmd.Start(); err != nil {
			return nil, fmt.Errorf("ferretdb: start %s: %w", bin, err)
		}
		go func() { _ = f.cmd.Wait(); close(f.exited) }()
		if lastErr = f.waitReady(); lastErr == nil {
			return f, nil
		}
		f.Stop()
	}
	return nil, lastErr
}

// waitReady waits until FerretDB lists its databases (which queries
// PostgreSQL).
func (f *Ferret) waitReady() error {
	cl, err := mongo.Connect(options.Client().ApplyURI(f.URI).SetTimeout(5 * time.Second))
	if err != nil {
		return fmt.Errorf("ferretdb: %w", err)
	}
	defer func() { _ = cl.Disconnect(context.Background()) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := cl.ListDatabaseNames(ctx, bson.D{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-f.exited:
			return fmt.Errorf("ferretdb exited at start:\n%s", f.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ferretdb not answering on %s: %v\n%s", f.Addr, err, f.logs.String())
		}
	}
}

// Output is what FerretDB has logged (errors only).
func (f *Ferret) Output() string { return f.logs.String() }

// Stop kills FerretDB (it keeps nothing that a clean shutdown would save:
// PostgreSQL holds the data) and waits for it. It may be called more than
// once.
func (f *Ferret) Stop() {
	f.stopOnce.Do(func() {
		_ = f.cmd.Process.Kill()
		<-f.exited
	})
}

// PGFerrets is one PostgreSQL server with n databases, a FerretDB over
// each: n independent Mongo upstreams, as tests need one per node.
type PGFerrets struct {
	PG       *Postgres
	Ferrets  []*Ferret
	indexIDs bool
}

// StartPGFerrets starts a PostgreSQL server and n FerretDB processes,
// each over its own database of it (ferret1..ferretN).
func StartPGFerrets(n int) (*PGFerrets, error) { return startPGFerrets(n, false) }

// StartPGFerretsIndexed is StartPGFerrets with the _id index of IndexIDs
// in every database.
func StartPGFerretsIndexed(n int) (*PGFerrets, error) { return startPGFerrets(n, true) }

func startPGFerrets(n int, indexIDs bool) (*PGFerrets, error) {
	pg, err := StartPostgres()
	if err != nil {
		return nil, err
	}
	s := &PGFerrets{PG: pg, indexIDs: indexIDs}
	if err := s.Add(n); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Add starts n more FerretDB processes, each over a new database.
func (s *PGFerrets) Add(n int) error {
	for range n {
		name := fmt.Sprintf("ferret%d", len(s.Ferrets)+1)
		if err := s.PG.CreateDatabase(name); err != nil {
			return err
		}
		if s.indexIDs {
			if err := s.PG.IndexIDs(name); err != nil {
				return err
			}
		}
		f, err := StartFerretDB(s.PG.URL(name), filepath.Join(s.PG.Dir, name+"-state"))
		if err != nil {
			return err
		}
		s.Ferrets = append(s.Ferrets, f)
	}
	return nil
}

// UnixURIs are the FerretDB processes' Unix-socket URIs, in order.
func (s *PGFerrets) UnixURIs() []string {
	var out []string
	for _, f := range s.Ferrets {
		out = append(out, f.UnixURI)
	}
	return out
}

// URIs are the FerretDB processes' mongodb:// URIs, in order.
func (s *PGFerrets) URIs() []string {
	var out []string
	for _, f := range s.Ferrets {
		out = append(out, f.URI)
	}
	return out
}

// Stop stops every FerretDB, then the server, and removes its folder.
func (s *PGFerrets) Stop() {
	for _, f := range s.Ferrets {
		f.Stop()
	}
	_ = s.PG.Stop()
}

// lockedBuffer is a goroutine-safe output sink.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// PGUpstreams starts n FerretDB-on-PostgreSQL upstreams for t (one server,
// a database and a FerretDB process each) and stops them when t ends.
func PGUpstreams(t testing.TB, n int) []string {
	t.Helper()
	s, err := StartPGFerrets(n)
	if err != nil {
		t.Fatalf("FerretDB on PostgreSQL: %v", err)
	}
	t.Cleanup(s.Stop)
	return s.URIs()
}

// PGUnixUpstreams is PGUpstreams with Unix-socket URIs, which nodes in
// network namespaces of their own can reach.
func PGUnixUpstreams(t testing.TB, n int) []string {
	t.Helper()
	s, err := StartPGFerrets(n)
	if err != nil {
		t.Fatalf("FerretDB on PostgreSQL: %v", err)
	}
	t.Cleanup(s.Stop)
	return s.UnixURIs()
}
