package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/testkit"
)

// cluster is several real edgenode processes on 127.0.0.1, .2, .3, ...
// joined by the mesh, each with its own ports, data folder and certificate.
// node1 has mongo.bootstrap: started first and alone (start waits for each
// node to be ready), it starts the cluster's data; the others, whose seeds
// include it, sync from it.
type cluster struct {
	t     *testing.T
	nodes []*nodeProc
	cfgs  []string
}

func newCluster(t *testing.T, n int, extra string) *cluster {
	t.Helper()
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if err := pki.InitCA(caDir); err != nil {
		t.Fatal(err)
	}
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(dir, "gossip.key")
	os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600)
	// Every clone shares the fleet secret that encrypts the fleet's TLS
	// material in the replicated collection.
	fleetSecret := writeFleetSecret(t, dir)
	c := &cluster{t: t}
	var seeds []string
	gossip := make([]int, n)
	for i := range n {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		gossip[i] = testkit.FreeUDPTCPPort(t, ip)
		seeds = append(seeds, fmt.Sprintf("%s:%d", ip, gossip[i]))
	}
	seedsJSON, _ := json.Marshal(seeds)
	for i := range n {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		id := fmt.Sprintf("node%d", i+1)
		certFile, keyPath, err := pki.IssueNode(caDir, id, filepath.Join(dir, "certs"), []string{ip})
		if err != nil {
			t.Fatal(err)
		}
		p := &nodeProc{
			t:       t,
			https:   fmt.Sprintf("%s:%d", ip, testkit.FreePort(t, ip)),
			admin:   fmt.Sprintf("%s:%d", ip, testkit.FreePort(t, ip)),
			dns:     fmt.Sprintf("%s:%d", ip, testkit.FreeUDPTCPPort(t, ip)),
			mongo:   fmt.Sprintf("%s:%d", ip, testkit.FreePort(t, ip)),
			dataDir: filepath.Join(dir, id),
		}
		cfg := fmt.Sprintf(`node:
  id: %s
  region: r%d
  public_ipv4: %s
  data_dir: %s
  drain_timeout: 10s
log: {level: debug}
https: {listen: "%s", fleet_secret: {file: %s}}
admin: {listen: "%s"}
dns:
  listen: "%s"
  dynamic: [{name: widget.edgenode.test., count: 3}]
mongo: {listen: "%s", bootstrap: %t}
mesh:
  enabled: true
  bind: "%s:%d"
  link_listen: "%s:%d"
  seeds: %s
  gossip_keys: [{file: %s}]
  profile: local
  ca_cert: %s
  cert: %s
  key_file: %s
`, id, i+1, ip, p.dataDir, p.https, fleetSecret, p.admin, p.dns, p.mongo, i == 0, ip, gossip[i], ip, testkit.FreeUDPTCPPort(t, ip),
			seedsJSON, keyFile, filepath.Join(caDir, pki.CACertName), certFile, keyPath)
		c.cfgs = append(c.cfgs, mergeYAML(t, cfg, extra))
		c.nodes = append(c.nodes, p)
	}
	return c
}

// writeFleetSecret writes a fleet secret (https.fleet_secret) in dir, as
// scripts/cluster makes one, and returns its path.
func writeFleetSecret(t *testing.T, dir string) string {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	path := filepath.Join(dir, "fleet.secret")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (c *cluster) start(i int) {
	p := *c.nodes[i]
	c.nodes[i] = startNode(c.t, c.cfgs[i], &p)
}

func (c *cluster) startAll() {
	for i := range c.nodes {
		c.start(i)
	}
}

type memberView struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	Verified   bool   `json:"verified"`
	Unverified string `json:"unverified"`
	Ready      bool   `json:"ready"`
	NotReady   string `json:"not_ready"`

	ConfigVersion string `json:"config_version"`
}

// members is what node i's /status.json says of every member.
func (c *cluster) members(i int) map[string]memberView {
	resp, err := http.Get("http://" + c.nodes[i].admin + "/status.json")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st struct{ Members []memberView }
	b, _ := io.ReadAll(resp.Body)
	if json.Unmarshal(b, &st) != nil {
		return nil
	}
	out := map[string]memberView{}
	for _, m := range st.Members {
		out[m.ID] = m
	}
	return out
}

// states is what node i's /status.json says of every member's state.
func (c *cluster) states(i int) map[string]string {
	out := map[string]string{}
	for id, m := range c.members(i) {
		out[id] = m.State
	}
	return out
}

// widget asks node i's DNS for the dynamic name and returns the addresses.
func (c *cluster) widget(i int) []string {
	out := widgetOrder(c.nodes[i].dns)
	sort.Strings(out)
	return out
}

func TestClusterMembershipFailureAndDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts several processes")
	}
	app, slowStarted := testApp(t)
	c := newCluster(t, 3, "https: {app_server: \""+app.URL+"\"}\n")
	start := time.Now()
	c.startAll()
	all := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	testkit.WaitFor(t, 15*time.Second, "three alive members on every node", func() bool {
		for i := range 3 {
			st := c.states(i)
			if len(st) != 3 || st["node1"] != "alive" || st["node2"] != "alive" || st["node3"] != "alive" {
				return false
			}
		}
		return true
	})
	t.Logf("all three alive on every node %v after the first start", time.Since(start).Round(time.Millisecond))
	// DNS names a peer once its mesh link is up with a certificate naming
	// its address (ca issue --host 127.0.0.i).
	testkit.WaitFor(t, 15*time.Second, "every node verified on every node and named by its DNS", func() bool {
		for i := range 3 {
			for _, m := range c.members(i) {
				if !m.Verified {
					return false
				}
			}
			if !slices.Equal(c.widget(i), all) {
				return false
			}
		}
		return true
	})
	t.Logf("all three verified and in DNS on every node %v after the first start", time.Since(start).Round(time.Millisecond))

	// kill -9 node3: the others mark it dead, and their DNS stops naming it,
	// within the documented failure-detection bound (plus polling slack).
	tuning, _ := mesh.ProfileTuning("local")
	bound := tuning.DetectionBound(3) + 2*time.Second
	c.nodes[2].cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	testkit.WaitFor(t, bound, "node3 dead and gone from DNS on node1 and node2", func() bool {
		for i := range 2 {
			if c.states(i)["node3"] != "dead" || slices.Contains(c.widget(i), "127.0.0.3") {
				return false
			}
		}
		return true
	})
	t.Logf("kill -9 to dead and out of DNS on both peers: %v (bound %v)", time.Since(killed).Round(time.Millisecond), bound)

	// Restart: it rejoins and is named again.
	c.nodes[2].wait(5 * time.Second)
	c.start(2)
	testkit.WaitFor(t, 15*time.Second, "node3 back", func() bool {
		for i := range 3 {
			if c.states(i)["node3"] != "alive" || !slices.Contains(c.widget(i), "127.0.0.3") {
				return false
			}
		}
		return true
	})

	// SIGTERM node2 while it has an in-flight request: the others see it
	// draining (and DNS stops naming it) before it leaves.
	slow := make(chan int, 1)
	go func() {
		resp, err := httpsClient(false).Get("https://" + c.nodes[1].https + "/slow")
		if err != nil {
			slow <- 0
			return
		}
		resp.Body.Close()
		slow <- resp.StatusCode
	}()
	testkit.WaitFor(t, 10*time.Second, "slow request in flight", func() bool { return slowStarted.Load() == 1 })
	c.nodes[1].signal(syscall.SIGTERM)
	sawDraining := false
	testkit.WaitFor(t, 20*time.Second, "node2 to leave node1's map", func() bool {
		switch c.states(0)["node2"] {
		case "draining":
			sawDraining = true
			if slices.Contains(c.widget(0), "127.0.0.2") {
				t.Error("draining node2 still named by DNS")
			}
		case "":
			return true
		}
		return false
	})
	if !sawDraining {
		t.Error("node2 left without being seen draining first")
	}
	if code := <-slow; code != 200 {
		t.Errorf("in-flight request on the draining node: %d", code)
	}
	if code := c.nodes[1].wait(20 * time.Second); code != 0 {
		t.Errorf("node2 exit code %d", code)
	}
	if st := c.states(2); st["node2"] != "" {
		t.Errorf("node3 still lists node2 after it left: %v", st)
	}
}

// widgetOrder asks the DNS server at addr for the widget name and returns
// the addresses in answer order.
func widgetOrder(addr string) []string {
	q := new(mdns.Msg)
	q.SetQuestion("widget.edgenode.test.", mdns.TypeA)
	r, _, err := (&mdns.Client{Timeout: 2 * time.Second}).Exchange(q, addr)
	if err != nil {
		return nil
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}
