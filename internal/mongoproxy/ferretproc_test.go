package mongoproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/testkit"
)

// An auth-enforcing upstream: the FerretDB server binary (v1.24.2, built by
// scripts/install-test-tools) run as its own process with new authentication,
// which requires a SCRAM conversation on every non-anonymous command. The
// embedded FerretDB the other tests use accepts anyone, so it cannot tell a
// faked authentication from a real one.

const (
	ferretAdminUser = "edgeadmin"
	ferretAdminPass = "edgeadmin-secret-0123"
)

var authDB struct {
	once   sync.Once
	err    error
	addr   string // 127.0.0.1:port
	proc   *os.Process
	exited chan struct{}
	dir    string
	logs   *syncBuffer
}

// stopAuthFerret stops the shared process (TestMain).
func stopAuthFerret() {
	if authDB.proc != nil {
		_ = authDB.proc.Kill()
		<-authDB.exited
	}
	if authDB.dir != "" {
		_ = os.RemoveAll(authDB.dir)
	}
}

// ferretdbPath is the FerretDB server binary. One that cannot print its
// version is passed over: `go install` builds one that panics at start
// (see scripts/install-test-tools).
func ferretdbPath() (string, error) {
	return testkit.Tool("ferretdb", func(p string) bool { return exec.Command(p, "--version").Run() == nil })
}

// authFerret returns the address of the shared auth-enforcing FerretDB
// (started on first use; tests use their own databases).
func authFerret(t testing.TB) string {
	t.Helper()
	authDB.once.Do(func() { authDB.err = startAuthFerret() })
	if authDB.err != nil {
		t.Fatalf("auth-enforcing FerretDB: %v", authDB.err)
	}
	return authDB.addr
}

// authURI is a URI to addr (the database, or something in front of it) with
// the setup user's credentials.
func authURI(addr string) string {
	return fmt.Sprintf("mongodb://%s:%s@%s/?authSource=admin&authMechanism=SCRAM-SHA-256", ferretAdminUser, ferretAdminPass, addr)
}

func startAuthFerret() error {
	bin, err := ferretdbPath()
	if err != nil {
		return err
	}
	authDB.dir, err = os.MkdirTemp("", "mongoproxy-ferretdb-")
	if err != nil {
		return err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := testkit.PickPort("127.0.0.1", false)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if err != nil {
			return err
		}
		data := filepath.Join(authDB.dir, fmt.Sprintf("data%d", attempt))
		if err := os.MkdirAll(data, 0o755); err != nil {
			return err
		}
		cmd := exec.Command(bin,
			"--handler=sqlite", "--sqlite-url=file:"+data+"/",
			"--listen-addr="+addr, "--debug-addr=-", "--state-dir="+data,
			"--test-enable-new-auth",
			"--setup-database=admin", "--setup-username="+ferretAdminUser, "--setup-password="+ferretAdminPass,
			"--telemetry=disable", "--log-level=error")
		logs := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		// Gone with the test binary, even if it is killed.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", bin, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		if err := waitAuthFerret(addr, exited); err != nil {
			_ = cmd.Process.Kill()
			<-exited
			lastErr = fmt.Errorf("%w; output:\n%s", err, logs.String())
			continue
		}
		// cmd.Wait runs in the goroutine above; TestMain kills the process.
		authDB.addr, authDB.proc, authDB.exited, authDB.logs = addr, cmd.Process, exited, logs
		return nil
	}
	return lastErr
}

// waitAuthFerret waits until the setup user can authenticate and run a
// command that needs authentication.
func waitAuthFerret(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := mongo.Connect(options.Client().ApplyURI(authURI(addr)).SetTimeout(5 * time.Second))
			if err != nil {
				return err
			}
			defer c.Disconnect(ctx)
			_, err = c.ListDatabaseNames(ctx, bson.D{})
			return err
		}()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("ferretdb exited")
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ferretdb not answering on %s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ensureUser creates user (password pass, no roles: FerretDB has none) in
// the admin database of the auth-enforcing FerretDB unless it exists.
func ensureUser(t testing.TB, user, pass string) {
	t.Helper()
	c := connect(t, authURI(authFerret(t)))
	defer c.Disconnect(testCtx)
	err := c.Database("admin").RunCommand(testCtx, bson.D{{Key: "createUser", Value: user}, {Key: "pwd", Value: pass}, {Key: "roles", Value: bson.A{}}}).Err()
	var se mongo.ServerError
	if err != nil && !(errors.As(err, &se) && se.HasErrorCode(51003)) { // UserAlreadyExists
		t.Fatalf("createUser %s: %v", user, err)
	}
}
