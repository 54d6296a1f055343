package mesh

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
)

// The partition test runs each node as a separate process in its own
// network namespace, so that a cut stops UDP (gossip probes, QUIC) and TCP
// alike:
//
//	ns node0 ─┐            ┌─ ns node2
//	          brA ══ xa/xb ══ brB        (bridges in a "switch" namespace)
//	ns node1 ─┘            └─ ns node3
//
// The cut takes the veth pair between the bridges down; healing brings it
// back up. Everything is deleted in t.Cleanup. It needs root and iproute2.

const helperEnv = "MESH_PARTITION_HELPER"

// TestPartitionHelperProcess is not a test: it is the node process of
// TestPartitionHeals, started through `ip netns exec`.
func TestPartitionHelperProcess(t *testing.T) {
	cfg := os.Getenv(helperEnv)
	if cfg == "" {
		t.Skip("helper process for TestPartitionHeals")
	}
	var opts Options
	if err := json.Unmarshal([]byte(cfg), &opts); err != nil {
		fmt.Fprintln(os.Stderr, "bad options:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	m, err := New(opts, log, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	go func() {
		for {
			mp, ch := m.Current()
			view := map[string]string{}
			for _, n := range mp.Nodes {
				view[n.ID] = n.State.String()
			}
			b, _ := json.Marshal(view)
			fmt.Printf("MAP %s\n", b)
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent closes stdin to stop us
	lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer lcancel()
	_ = m.Leave(lctx)
	os.Exit(0)
}

type partitionNet struct {
	t      *testing.T
	suffix string
	sw     string
	nodes  []string // namespace per node
}

func run(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func setupPartitionNet(t *testing.T, n int) *partitionNet {
	suffix := fmt.Sprintf("%d", os.Getpid()%100000)
	p := &partitionNet{t: t, suffix: suffix, sw: "msw" + suffix}
	// Cleanup first, so that a failure halfway still removes what exists.
	t.Cleanup(func() {
		for _, ns := range append([]string{p.sw}, p.nodes...) {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	run(t, "ip", "netns", "add", p.sw)
	run(t, "ip", "-n", p.sw, "link", "set", "lo", "up")
	for _, br := range []string{"brA", "brB"} {
		run(t, "ip", "-n", p.sw, "link", "add", br, "type", "bridge")
		run(t, "ip", "-n", p.sw, "link", "set", br, "up")
	}
	run(t, "ip", "-n", p.sw, "link", "add", "xa", "type", "veth", "peer", "name", "xb")
	run(t, "ip", "-n", p.sw, "link", "set", "xa", "master", "brA", "up")
	run(t, "ip", "-n", p.sw, "link", "set", "xb", "master", "brB", "up")
	for i := range n {
		ns := fmt.Sprintf("mn%s-%d", suffix, i)
		p.nodes = append(p.nodes, ns)
		run(t, "ip", "netns", "add", ns)
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		v := fmt.Sprintf("v%d", i)
		run(t, "ip", "-n", p.sw, "link", "add", v, "type", "veth", "peer", "name", "eth0", "netns", ns)
		br := "brA"
		if i >= n/2 {
			br = "brB"
		}
		run(t, "ip", "-n", p.sw, "link", "set", v, "master", br, "up")
		run(t, "ip", "-n", ns, "addr", "add", p.ip(i)+"/24", "dev", "eth0")
		run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	}
	return p
}

func (p *partitionNet) ip(i int) string { return fmt.Sprintf("10.77.0.%d", i+1) }

func (p *partitionNet) cut(on bool) {
	state := "up"
	if on {
		state = "down"
	}
	run(p.t, "ip", "-n", p.sw, "link", "set", "xa", state)
	run(p.t, "ip", "-n", p.sw, "link", "set", "xb", state)
}

// nodeProc is one node process and the latest map it printed.
type nodeProc struct {
	id     string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *testkit.LogBuffer
	mu     sync.Mutex
	view   map[string]string
	change chan struct{}
}

func (np *nodeProc) wait(t *testing.T, timeout time.Duration, what string, cond func(map[string]string) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		np.mu.Lock()
		ok := cond(np.view)
		view := fmt.Sprint(np.view)
		np.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-np.change:
		case <-deadline:
			t.Fatalf("%s: timed out waiting for %s; view %s\nlog:\n%s", np.id, what, view, np.stderr.String())
		}
	}
}

func TestPartitionHeals(t *testing.T) {
	if os.Getenv(helperEnv) != "" {
		t.Skip()
	}
	if testing.Short() {
		t.Skip("slow: partitions a 4-node cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2")
	}
	if err := exec.Command("ip", "netns", "list").Run(); err != nil {
		t.Skipf("network namespaces unavailable: %v", err)
	}
	const n = 4
	pn := setupPartitionNet(t, n)
	c := newCluster(t)
	ids := make([]string, n)
	procs := make([]*nodeProc, n)
	tuning := Tuning{GossipToTheDeadTime: 3 * time.Second}
	for i := range n {
		ids[i] = fmt.Sprintf("node%d", i)
	}
	for i := range n {
		o := c.options(ids[i])
		ip := pn.ip(i)
		o.BindAddr = ip + ":7946"
		o.LinkAddr = ip + ":7947"
		o.PublicIPv4 = netip.MustParseAddr(ip)
		o.Seeds = []string{pn.ip(0) + ":7946", pn.ip(n-1) + ":7946"}
		o.Tuning = tuning
		cfg, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("ip", "netns", "exec", pn.nodes[i], os.Args[0], "-test.run=^TestPartitionHelperProcess$")
		cmd.Env = append(os.Environ(), helperEnv+"="+string(cfg))
		np := &nodeProc{id: ids[i], cmd: cmd, stderr: &testkit.LogBuffer{}, view: map[string]string{}, change: make(chan struct{}, 1)}
		cmd.Stderr = np.stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if np.stdin, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			np.stdin.Close()
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				line, ok := strings.CutPrefix(sc.Text(), "MAP ")
				if !ok {
					continue
				}
				view := map[string]string{}
				if json.Unmarshal([]byte(line), &view) != nil {
					continue
				}
				np.mu.Lock()
				np.view = view
				np.mu.Unlock()
				select {
				case np.change <- struct{}{}:
				default:
				}
			}
		}()
		procs[i] = np
	}
	states := func(want map[string]string) func(map[string]string) bool {
		return func(v map[string]string) bool {
			for id, st := range want {
				if v[id] != st {
					return false
				}
			}
			return true
		}
	}
	allAlive := map[string]string{}
	for _, id := range ids {
		allAlive[id] = nodemap.Alive.String()
	}
	for _, np := range procs {
		np.wait(t, settle, "4 alive", states(allAlive))
	}

	prof, _ := ProfileTuning("local")
	prof = prof.merge(tuning)
	start := time.Now()
	pn.cut(true)
	for i, np := range procs {
		want := map[string]string{}
		for j, id := range ids {
			switch {
			case (i < n/2) == (j < n/2):
				want[id] = nodemap.Alive.String()
			default:
				want[id] = nodemap.Dead.String()
			}
		}
		np.wait(t, settle, "the other side dead", states(want))
		t.Logf("%s sees the other side dead after %v (bound %v)", np.id, time.Since(start).Round(time.Millisecond), prof.DetectionBound(n))
	}
	// Hold the cut past GossipToTheDeadTime: memberlist stops gossiping to
	// the other side and forgets it, so only the rejoin loop can heal this.
	time.Sleep(prof.GossipToTheDeadTime + time.Second)

	start = time.Now()
	pn.cut(false)
	for _, np := range procs {
		np.wait(t, settle, "healed: 4 alive", states(allAlive))
		t.Logf("%s healed after %v (bound %v)", np.id, time.Since(start).Round(time.Millisecond), prof.HealBound())
	}
}
