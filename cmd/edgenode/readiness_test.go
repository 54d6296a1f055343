package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/testkit"
)

// ferretDB is a FerretDB server run as its own process (the binary from
// scripts/install-test-tools), as a node's mongo.upstream: unlike the
// embedded database it can be paused with SIGSTOP.
type ferretDB struct {
	addr string
	cmd  *exec.Cmd
	out  *testkit.LogBuffer
	done chan struct{}
}

// ferretBinary finds FerretDB in $TOOLS_DIR, <repo>/tools or PATH.
func ferretBinary(t *testing.T) string {
	t.Helper()
	var cands []string
	if d := os.Getenv("TOOLS_DIR"); d != "" {
		cands = append(cands, filepath.Join(d, "ferretdb"))
	}
	_, file, _, _ := runtime.Caller(0)
	cands = append(cands, filepath.Join(filepath.Dir(file), "..", "..", "tools", "ferretdb"))
	if p, err := exec.LookPath("ferretdb"); err == nil {
		cands = append(cands, p)
	}
	for _, p := range cands {
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Skip("no ferretdb binary (set TOOLS_DIR, or run scripts/install-test-tools)")
	return ""
}

// startFerretDB starts FerretDB on SQLite in a temporary folder, on
// 127.0.0.1, and waits until it answers.
func startFerretDB(t *testing.T) *ferretDB {
	t.Helper()
	bin := ferretBinary(t)
	dir := t.TempDir()
	f := &ferretDB{
		addr: fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t, "127.0.0.1")),
		out:  &testkit.LogBuffer{},
		done: make(chan struct{}),
	}
	f.cmd = exec.Command(bin, "--handler=sqlite", "--sqlite-url=file:"+dir+"/", "--listen-addr="+f.addr,
		"--debug-addr=-", "--state-dir="+dir, "--telemetry=disable", "--log-level=error")
	f.cmd.Stdout, f.cmd.Stderr = f.out, f.out
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = f.cmd.Wait(); close(f.done) }()
	t.Cleanup(func() {
		_ = f.cmd.Process.Signal(syscall.SIGCONT)
		_ = f.cmd.Process.Kill()
		<-f.done
		if t.Failed() {
			t.Logf("ferretdb output:\n%s", f.out.String())
		}
	})
	cl, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + f.addr + "/?directConnection=true").SetTimeout(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Disconnect(context.Background())
	testkit.WaitFor(t, 60*time.Second, "ferretdb to answer", func() bool {
		select {
		case <-f.done:
			t.Fatalf("ferretdb exited:\n%s", f.out.String())
		default:
		}
		return cl.Ping(context.Background(), nil) == nil
	})
	return f
}

// writeTicks inserts a document through node p's proxy every 100ms until
// the returned stop is called, so the node's peers always have its ops to
// apply.
func writeTicks(t *testing.T, p *nodeProc) (stop func()) {
	cl := mongoClient(t, p)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		coll := cl.Database(replDB).Collection("ticks")
		for i := 0; ctx.Err() == nil; i++ {
			wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := coll.InsertOne(wctx, bson.D{{Key: "_id", Value: i}, {Key: "at", Value: time.Now()}})
			wcancel()
			if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Logf("tick %d: %v", i, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// TestLaggingNodeLeavesDNSEverywhere is issue 16's readiness in DNS with
// real processes: three nodes, node3's database an external FerretDB.
// Writes go on at node1 while node3's database is paused (SIGSTOP), so
// node3's replica falls behind by more than mongo.max_lag: node3 says it
// is not ready, and every node's DNS, its own included, stops naming it
// within a few seconds; once the database runs again node3 catches up and
// is named again.
func TestLaggingNodeLeavesDNSEverywhere(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	fdb := startFerretDB(t)
	c := newCluster(t, 3, "mongo: {max_lag: 2s}\nlog: {level: info}\n")
	c.cfgs[2] = mergeYAML(t, c.cfgs[2], fmt.Sprintf("mongo: {upstream: \"mongodb://%s/\"}\n", fdb.addr))
	c.startAll()
	waitWritable(t, c, 60*time.Second, 0, 1, 2)
	all := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	inDNS := func(want []string) func() bool {
		return func() bool {
			for i := range 3 {
				if !slices.Equal(c.widget(i), want) {
					return false
				}
			}
			return true
		}
	}
	// Ready everywhere first: while no node is ready, DNS names them all.
	testkit.WaitFor(t, 30*time.Second, "every node ready in every node's map", func() bool {
		for i := range 3 {
			ms := c.members(i)
			if len(ms) != 3 {
				return false
			}
			for _, m := range ms {
				if !m.Ready {
					return false
				}
			}
		}
		return true
	})
	testkit.WaitFor(t, 30*time.Second, "every node named by every node's DNS", inDNS(all))

	stop := writeTicks(t, c.nodes[0])
	defer stop()
	testkit.WaitFor(t, 30*time.Second, "node3 applying node1's writes", func() bool {
		st, err := replStatus(c.nodes[2])
		if err != nil {
			return false
		}
		for _, o := range st.Origins {
			if o.Node == "node1" && o.Applied > 0 {
				return true
			}
		}
		return false
	})

	if err := fdb.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	testkit.WaitFor(t, 30*time.Second, "node3 out of every node's DNS", inDNS(all[:2]))
	t.Logf("database paused to node3 out of every node's DNS: %v (max_lag 2s)", time.Since(paused).Round(time.Millisecond))
	m := c.members(0)["node3"]
	if m.Ready || !strings.Contains(m.NotReady, "max_lag") || m.State != "alive" {
		t.Errorf("node1's view of node3: %+v; want alive, not ready for lag", m)
	}
	if r := c.nodes[2].out.String(); !strings.Contains(r, "node not ready") {
		t.Errorf("node3 did not log that it is not ready")
	}

	if err := fdb.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	testkit.WaitFor(t, 60*time.Second, "node3 back in every node's DNS", inDNS(all))
	t.Logf("database resumed to node3 back in every node's DNS: %v", time.Since(resumed).Round(time.Millisecond))
}
