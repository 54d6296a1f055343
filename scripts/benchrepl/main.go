// Command benchrepl measures Mongo replication between three real edgenode
// processes on loopback (127.0.0.1-3, random ports, embedded FerretDB behind
// each node's proxy) and prints a table:
//
//   - replication lag p50/p99 at a target write rate (default 1,000 and
//     10,000 writes/s, spread over the three nodes): from every node's
//     edgenode_mongo_repl_delay_seconds histogram (apply time minus the
//     origin's clock at capture), the run's delta, merged over nodes and
//     origins, interpolated within buckets;
//   - catch-up after a partition: one node is stopped (SIGSTOP: its peers
//     see it dead, it sends and receives nothing) while the others write at
//     -partition-rate, then resumed with writes stopped once the other two
//     have applied each other's ops; the rate is the ops it was behind over
//     the time until its lag is zero, with the documents it wrote for them;
//   - initial sync: node1 gets N documents, node3 is killed, its data folder
//     wiped, and restarted; the rate is the documents over the time from its
//     start to synced (and the node's own figure for the copy alone).
//
// Nothing is asserted; targets are printed beside the figures. Usage:
//
//	go run ./scripts/benchrepl -bin bin/edgenode [-duration 10s] [-rates 100,1000,10000]
//	    [-partition 60s] [-partition-rate 1000] [-sync-docs 50000]
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/testkit"
)

var (
	flagBin       = flag.String("bin", "bin/edgenode", "the edgenode binary")
	flagDuration  = flag.Duration("duration", 10*time.Second, "length of each lag run")
	flagRates     = flag.String("rates", "100,1000,10000", "write rates (writes/s over the three nodes) for the lag runs")
	flagPartition = flag.Duration("partition", 60*time.Second, "how long one node is cut off for the catch-up run (the issue's figure: 5m)")
	flagPartRate  = flag.Int("partition-rate", 1000, "writes/s on the other two nodes during the partition")
	flagSyncDocs  = flag.Int("sync-docs", 50000, "documents on node1 for the initial-sync run")
	flagDocs      = flag.Int("working-set", 10000, "documents the writes go to")
	flagConns     = flag.Int("conns", 48, "client connections (spread over the nodes)")
	flagKeep      = flag.Bool("keep", false, "keep the temporary folder (node logs)")
	flagUpstreams = flag.String("upstreams", "", "three comma-separated MongoDB URIs, each node's mongo.upstream (empty: the embedded FerretDB of each node)")
	flagTSV       = flag.String("tsv", "", "also write the rows to this file as key<TAB>target<TAB>short figure<TAB>number (scripts/bench joins two runs)")
	flagCapFrac   = flag.Float64("capacity-fraction", 0.5, "also measure lag at this fraction of the upstream's own write capacity (0: skip); the capacity is measured straight to node1's upstream with -upstreams, else through the three proxies")
)

// row is one line of the table; key, short and num are its summary for
// -tsv (key names the measure the same way in every run).
type row struct {
	measure, target, figure string
	key, short              string
	num                     float64
}

type node struct {
	id, ip  string
	admin   string
	mongo   string
	dataDir string
	cfg     string
	cmd     *exec.Cmd
	log     *os.File
	client  *mongo.Client
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchrepl:", err)
		os.Exit(1)
	}
}

func run() error {
	bin, err := filepath.Abs(*flagBin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s: %w (build it first: make build)", bin, err)
	}
	dir, err := os.MkdirTemp("", "benchrepl-")
	if err != nil {
		return err
	}
	if *flagKeep {
		fmt.Fprintln(os.Stderr, "benchrepl: files in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	nodes, err := setup(dir)
	if err != nil {
		return err
	}
	defer func() {
		for _, n := range nodes {
			n.stop()
		}
	}()
	for _, n := range nodes {
		if err := n.start(bin); err != nil {
			return err
		}
	}
	if err := waitSynced(nodes, 90*time.Second); err != nil {
		return err
	}
	for _, n := range nodes {
		if n.client, err = connect(n); err != nil {
			return err
		}
	}
	if err := seed(nodes[0], *flagDocs); err != nil {
		return err
	}
	if err := waitCaughtUp(nodes, 120*time.Second); err != nil {
		return err
	}
	var rows []row
	for _, s := range strings.Split(*flagRates, ",") {
		if strings.TrimSpace(s) == "" {
			continue
		}
		rate, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || rate <= 0 {
			return fmt.Errorf("bad rate %q", s)
		}
		lr, err := lagRun(nodes, rate, *flagDuration)
		if err != nil {
			return err
		}
		rows = append(rows, lr)
		if err := waitCaughtUp(nodes, 5*time.Minute); err != nil {
			return err
		}
	}
	if *flagCapFrac > 0 {
		capRows, err := capacityLagRun(nodes, *flagCapFrac, *flagDuration)
		if err != nil {
			return err
		}
		rows = append(rows, capRows...)
		if err := waitCaughtUp(nodes, 5*time.Minute); err != nil {
			return err
		}
	}
	cr, err := catchUpRun(nodes, *flagPartition, *flagPartRate)
	if err != nil {
		return err
	}
	rows = append(rows, cr)
	if *flagSyncDocs > 0 {
		// Last, and not fatal: the rows above are printed whatever happens
		// here (seeding 50,000 documents through the proxy can outlast the
		// client's timeout on a database that scans a table per _id lookup).
		sr, err := syncRun(bin, nodes, *flagSyncDocs)
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchrepl: initial sync run:", err)
			sr = row{measure: fmt.Sprintf("initial sync (%d documents, wiped node3)", *flagSyncDocs), target: ">= 10,000 docs/s",
				figure: "failed: " + err.Error(), key: "initial sync", short: "failed", num: 0}
		}
		rows = append(rows, sr)
	}

	fmt.Println()
	what := "embedded FerretDB (SQLite) per node"
	if *flagUpstreams != "" {
		what = "upstreams " + *flagUpstreams
	}
	fmt.Println("Mongo replication, 3 edgenode processes on loopback,", what)
	fmt.Printf("%-58s %-14s %s\n", "measure", "target", "measured")
	var tsv strings.Builder
	for _, r := range rows {
		fmt.Printf("%-58s %-14s %s\n", r.measure, r.target, r.figure)
		fmt.Fprintf(&tsv, "%s\t%s\t%s\t%g\n", r.key, r.target, r.short, r.num)
	}
	if *flagTSV != "" {
		return os.WriteFile(*flagTSV, []byte(tsv.String()), 0o644)
	}
	return nil
}

// capacityLagRun measures the upstream's own write capacity (the
// benchmark's writes as fast as -conns clients go for 5 s: straight to
// node1's upstream when -upstreams names it, else through the three
// proxies, which gives a lower figure), then the lag at frac of it.
func capacityLagRun(nodes []*node, frac float64, d time.Duration) ([]row, error) {
	targets, how := nodes, "through the proxies"
	if *flagUpstreams != "" {
		uri := strings.Split(*flagUpstreams, ",")[0]
		c, err := mongo.Connect(options.Client().ApplyURI(uri))
		if err != nil {
			return nil, err
		}
		defer c.Disconnect(context.Background())
		targets, how = []*node{{id: "direct", client: c}}, "straight to node1's upstream"
	}
	fmt.Fprintf(os.Stderr, "benchrepl: write capacity (%s)...\n", how)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	start := time.Now()
	done, _ := load(ctx, targets, 1_000_000)
	cancel()
	capacity := float64(done) / time.Since(start).Seconds()
	if err := waitCaughtUp(nodes, 5*time.Minute); err != nil {
		return nil, err
	}
	rate := max(1, int(capacity*frac))
	lr, err := lagRun(nodes, rate, d)
	if err != nil {
		return nil, err
	}
	lr.measure = fmt.Sprintf("%s (%.0f%% of capacity)", lr.measure, 100*frac)
	lr.key = fmt.Sprintf("lag p50 / p99 at %.0f%% of capacity", 100*frac)
	lr.target = "p99 < 100 ms"
	capRow := row{measure: "upstream write capacity, " + how, figure: fmt.Sprintf("%.0f writes/s", capacity),
		key: "upstream write capacity", short: fmt.Sprintf("%.0f writes/s", capacity), num: capacity}
	return []row{capRow, lr}, nil
}

func setup(dir string) ([]*node, error) {
	caDir := filepath.Join(dir, "ca")
	if err := pki.InitCA(caDir); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	keyFile := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, err
	}
	// The fleet secret every clone shares (https.fleet_secret).
	fleet := make([]byte, 32)
	_, _ = rand.Read(fleet)
	fleetFile := filepath.Join(dir, "fleet.secret")
	if err := os.WriteFile(fleetFile, []byte(base64.StdEncoding.EncodeToString(fleet)+"\n"), 0o600); err != nil {
		return nil, err
	}
	var nodes []*node
	var seeds []string
	gossip := map[int]int{}
	for i := range 3 {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		p, err := testkit.PickPort(ip, true)
		if err != nil {
			return nil, err
		}
		gossip[i] = p
		seeds = append(seeds, fmt.Sprintf("%s:%d", ip, p))
	}
	seedsJSON, _ := json.Marshal(seeds)
	for i := range 3 {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		id := fmt.Sprintf("node%d", i+1)
		cert, keyPath, err := pki.IssueNode(caDir, id, filepath.Join(dir, "certs"), []string{ip})
		if err != nil {
			return nil, err
		}
		ports := make([]int, 5)
		for k := range ports {
			if ports[k], err = testkit.PickPort(ip, true); err != nil {
				return nil, err
			}
		}
		n := &node{id: id, ip: ip, admin: fmt.Sprintf("%s:%d", ip, ports[0]), mongo: fmt.Sprintf("%s:%d", ip, ports[1]), dataDir: filepath.Join(dir, id)}
		n.cfg = filepath.Join(dir, id+".yaml")
		cfg := fmt.Sprintf(`node:
  id: %s
  data_dir: %s
  public_ipv4: %s
log: {level: info}
https: {listen: "%s:%d", fleet_secret: {file: %s}}
admin: {listen: "%s"}
dns: {enabled: false}
cdn: {enabled: false}
mongo: {listen: "%s"%s}
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
`, id, n.dataDir, ip, ip, ports[2], fleetFile, n.admin, n.mongo, upstreamYAML(i), ip, gossip[i], ip, ports[3], seedsJSON, keyFile, filepath.Join(caDir, pki.CACertName), cert, keyPath)
		if err := os.WriteFile(n.cfg, []byte(cfg), 0o600); err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

func (n *node) start(bin string) error {
	f, err := os.OpenFile(filepath.Join(filepath.Dir(n.cfg), n.id+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	n.log = f
	n.cmd = exec.Command(bin, "run", "--config", n.cfg)
	n.cmd.Stdout, n.cmd.Stderr = f, f
	if err := n.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.id, err)
	}
	return nil
}

func (n *node) stop() {
	if n.client != nil {
		_ = n.client.Disconnect(context.Background())
		n.client = nil
	}
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Signal(syscall.SIGCONT)
		_ = n.cmd.Process.Kill()
		_ = n.cmd.Wait()
		n.cmd = nil
	}
	if n.log != nil {
		n.log.Close()
	}
}

type status struct {
	State   string `json:"state"`
	Writes  string `json:"writes"`
	Origins []struct {
		Node   string `json:"node"`
		LagOps uint64 `json:"lag_ops"`
	} `json:"origins"`
	Peers []struct {
		Node   string `json:"node"`
		LagOps uint64 `json:"lag_ops"`
	} `json:"peers"`
}

var httpc = &http.Client{Timeout: 3 * time.Second}

func (n *node) status() (status, error) {
	var st status
	resp, err := httpc.Get("http://" + n.admin + "/mongo/status.json")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return st, json.Unmarshal(b, &st)
}

func waitSynced(nodes []*node, d time.Duration) error {
	deadline := time.Now().Add(d)
	for _, n := range nodes {
		for {
			st, err := n.status()
			if err == nil && st.State == "synced" && st.Writes == "accepted" {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not synced after %v (state %q, writes %q, %v)", n.id, d, st.State, st.Writes, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// lagOps is how many ops node n has not applied yet, over every live origin.
func lagOps(n *node) (uint64, error) {
	st, err := n.status()
	if err != nil {
		return 0, err
	}
	var sum uint64
	for _, o := range st.Origins {
		sum += o.LagOps
	}
	return sum, nil
}

func waitCaughtUp(nodes []*node, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		done := true
		for _, n := range nodes {
			st, err := n.status()
			if err != nil {
				done = false
				break
			}
			for _, p := range st.Peers {
				if p.LagOps > 0 {
					done = false
				}
			}
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replication did not catch up within %v", d)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func connect(n *node) (*mongo.Client, error) {
	return mongo.Connect(options.Client().ApplyURI("mongodb://" + n.mongo + "/?directConnection=true").
		SetMaxPoolSize(uint64(*flagConns)).SetTimeout(30 * time.Second))
}

// seed creates the working set on node1.
func seed(n *node, docs int) error {
	c := n.client.Database("bench").Collection("w")
	ctx := context.Background()
	for start := 0; start < docs; start += 1000 {
		var batch []any
		for i := start; i < min(start+1000, docs); i++ {
			batch = append(batch, bson.D{{Key: "_id", Value: fmt.Sprintf("w%06d", i)}, {Key: "n", Value: int64(0)}, {Key: "s", Value: "seed"}})
		}
		if _, err := c.InsertMany(ctx, batch, options.InsertMany().SetOrdered(false)); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	return nil
}

// load writes at rate writes/s (spread over the given nodes) until ctx
// ends; it returns the writes done and failed.
func load(ctx context.Context, nodes []*node, rate int) (done, failed int64) {
	var d, f atomic.Int64
	var wg sync.WaitGroup
	conns := *flagConns
	interval := time.Duration(float64(time.Second) * float64(conns) / float64(rate))
	for w := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := nodes[w%len(nodes)]
			c := n.client.Database("bench").Collection("w")
			next := time.Now().Add(time.Duration(w) * interval / time.Duration(conns))
			k := uint64(w) * 7919
			for {
				if wait := time.Until(next); wait > 0 {
					select {
					case <-ctx.Done():
						return
					case <-time.After(wait):
					}
				} else if ctx.Err() != nil {
					return
				}
				next = next.Add(interval)
				k = k*6364136223846793005 + 1442695040888963407
				id := fmt.Sprintf("w%06d", (k>>33)%uint64(*flagDocs))
				wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := c.UpdateOne(wctx, bson.D{{Key: "_id", Value: id}},
					bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}, {Key: "$set", Value: bson.D{{Key: "s", Value: n.id}}}})
				cancel()
				if err != nil {
					f.Add(1)
				} else {
					d.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return d.Load(), f.Load()
}

// histogram is one scrape of edgenode_mongo_repl_delay_seconds summed over
// origins: cumulative counts per upper bound.
type histogram map[float64]float64

// scrapeDelay is n's replication delay histogram: cumulative counts by
// upper bound, +Inf included.
func scrapeDelay(n *node) (histogram, error) {
	fams, err := families(n)
	if err != nil {
		return nil, err
	}
	h := histogram{}
	for _, m := range fams["edgenode_mongo_repl_delay_seconds"].GetMetric() {
		hm := m.GetHistogram()
		for _, b := range hm.GetBucket() {
			if !math.IsInf(b.GetUpperBound(), 1) {
				h[b.GetUpperBound()] += float64(b.GetCumulativeCount())
			}
		}
		h[math.Inf(1)] += float64(hm.GetSampleCount())
	}
	return h, nil
}

// families is n's /metrics, parsed.
func families(n *node) (map[string]*dto.MetricFamily, error) {
	resp, err := httpc.Get("http://" + n.admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

// metricSum is the sum of a counter's or gauge's samples (every label set)
// on n.
func metricSum(n *node, name string) (float64, error) {
	fams, err := families(n)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, m := range fams[name].GetMetric() {
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue()
	}
	return sum, nil
}

func scrapeAll(nodes []*node) (histogram, error) {
	sum := histogram{}
	for _, n := range nodes {
		h, err := scrapeDelay(n)
		if err != nil {
			return nil, err
		}
		for k, v := range h {
			sum[k] += v
		}
	}
	return sum, nil
}

// quantile interpolates linearly within the bucket holding q of the
// difference after-before.
func quantile(before, after histogram, q float64) (float64, float64) {
	var bounds []float64
	for k := range after {
		bounds = append(bounds, k)
	}
	sort.Float64s(bounds)
	if len(bounds) == 0 {
		return math.NaN(), 0
	}
	total := after[bounds[len(bounds)-1]] - before[bounds[len(bounds)-1]]
	if total <= 0 {
		return math.NaN(), 0
	}
	target := q * total
	prevBound, prevCount := 0.0, 0.0
	for _, b := range bounds {
		c := after[b] - before[b]
		if c >= target {
			if math.IsInf(b, 1) {
				return prevBound, total
			}
			frac := 0.0
			if c > prevCount {
				frac = (target - prevCount) / (c - prevCount)
			}
			return prevBound + frac*(b-prevBound), total
		}
		prevBound, prevCount = b, c
	}
	return prevBound, total
}

func ms(s float64) string {
	if math.IsNaN(s) {
		return "n/a"
	}
	return fmt.Sprintf("%.1f ms", s*1000)
}

func lagRun(nodes []*node, rate int, d time.Duration) (row, error) {
	fmt.Fprintf(os.Stderr, "benchrepl: lag at %d writes/s for %v...\n", rate, d)
	before, err := scrapeAll(nodes)
	if err != nil {
		return row{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	start := time.Now()
	done, failed := load(ctx, nodes, rate)
	cancel()
	elapsed := time.Since(start)
	if err := waitCaughtUp(nodes, 5*time.Minute); err != nil {
		return row{}, err
	}
	after, err := scrapeAll(nodes)
	if err != nil {
		return row{}, err
	}
	p50, n := quantile(before, after, 0.5)
	p99, _ := quantile(before, after, 0.99)
	target := "-"
	if rate == 1000 {
		target = "p99 < 100 ms"
	}
	achieved := float64(done) / elapsed.Seconds()
	m := fmt.Sprintf("lag p50 / p99 at %d writes/s", rate)
	return row{measure: m, target: target,
		figure: fmt.Sprintf("%s / %s (achieved %.0f writes/s, %d failed; %.0f applies measured)", ms(p50), ms(p99), achieved, failed, n),
		key:    m, short: fmt.Sprintf("%s / %s", ms(p50), ms(p99)), num: p99 * 1000}, nil
}

func catchUpRun(nodes []*node, part time.Duration, rate int) (row, error) {
	fmt.Fprintf(os.Stderr, "benchrepl: node3 cut off for %v while the others write %d/s...\n", part, rate)
	n3 := nodes[2]
	// Documents node3 reads (from its cache or the database) to apply ops:
	// one per document and apply, so the difference over the catch-up is
	// the documents it wrote, and ops / documents is what each write
	// carried (the load's spread over the working set decides it).
	docsBefore, docsErr := metricSum(n3, "edgenode_mongoproxy_doc_cache_lookups_total")
	if err := n3.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return row{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), part)
	done, failed := load(ctx, nodes[:2], rate)
	cancel()
	// The two writing nodes replicate to each other too, and when the load
	// is more than their databases take they end it behind each other. The
	// measure is node3's catch-up, alone: node3 stays cut off until the
	// other two have applied each other's ops (else three backlogs share
	// the machine, and the figure is the cluster's).
	// (waitCaughtUp does not serve: it waits for every peer to acknowledge,
	// and node3, stopped, acknowledges nothing.)
	settleStart := time.Now()
	settled := testkit.Poll(10*time.Minute, func() bool {
		for _, n := range nodes[:2] {
			if lag, err := lagOps(n); err != nil || lag > 0 {
				return false
			}
		}
		return true
	})
	settle := time.Since(settleStart)
	if !settled {
		_ = n3.cmd.Process.Signal(syscall.SIGCONT)
		return row{}, fmt.Errorf("node1 and node2 still behind each other %v after the load", settle.Round(time.Second))
	}
	if err := n3.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		return row{}, err
	}
	start := time.Now()
	// The resumed node learns the peers' positions from their heartbeats;
	// the backlog is the largest lag it reports.
	var peak uint64
	var last time.Time
	for time.Since(start) < 15*time.Minute {
		lag, err := lagOps(n3)
		if err == nil {
			peak = max(peak, lag)
			if lag == 0 && peak > 0 {
				last = time.Now()
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if last.IsZero() {
		return row{}, fmt.Errorf("node3 did not catch up (peak lag %d)", peak)
	}
	took := last.Sub(start)
	opsPerSec := float64(done) / took.Seconds()
	written := ""
	if docsAfter, err := metricSum(n3, "edgenode_mongoproxy_doc_cache_lookups_total"); err == nil && docsErr == nil && docsAfter > docsBefore {
		d := docsAfter - docsBefore
		written = fmt.Sprintf("; %.0f document writes, %.1f ops each, %.0f writes/s", d, float64(done)/d, d/took.Seconds())
	}
	return row{measure: fmt.Sprintf("catch-up after a %v partition (%d ops behind)", part, done), target: ">= 5,000 ops/s",
		figure: fmt.Sprintf("%.0f ops/s (%d ops in %v from resume%s; %d writes failed; resumed once the others had applied each other's ops, %v after the load)", opsPerSec, done, took.Round(time.Millisecond), written, failed, settle.Round(100*time.Millisecond)),
		key:    fmt.Sprintf("catch-up after a %v partition", part), short: fmt.Sprintf("%.0f ops/s", opsPerSec), num: opsPerSec}, nil
}

func syncRun(bin string, nodes []*node, docs int) (row, error) {
	fmt.Fprintf(os.Stderr, "benchrepl: initial sync of %d documents...\n", docs)
	c := nodes[0].client.Database("bench").Collection("sync")
	ctx := context.Background()
	for start := 0; start < docs; start += 1000 {
		var batch []any
		for i := start; i < min(start+1000, docs); i++ {
			batch = append(batch, bson.D{{Key: "_id", Value: fmt.Sprintf("s%07d", i)}, {Key: "n", Value: i}, {Key: "body", Value: strings.Repeat("b", 200)}})
		}
		if _, err := c.InsertMany(ctx, batch, options.InsertMany().SetOrdered(false)); err != nil {
			return row{}, err
		}
	}
	if err := waitCaughtUp(nodes, 10*time.Minute); err != nil {
		return row{}, err
	}
	total, err := c.CountDocuments(ctx, bson.D{})
	if err != nil {
		return row{}, err
	}
	total += int64(*flagDocs)
	n3 := nodes[2]
	n3.stop()
	if err := os.RemoveAll(n3.dataDir); err != nil {
		return row{}, err
	}
	start := time.Now()
	if err := n3.start(bin); err != nil {
		return row{}, err
	}
	if err := waitSynced([]*node{n3}, 15*time.Minute); err != nil {
		return row{}, err
	}
	took := time.Since(start)
	inner := ""
	if f, err := metricSum(n3, "edgenode_mongo_repl_initial_sync_docs_per_second"); err == nil && f > 0 {
		inner = fmt.Sprintf("; copy alone %.0f docs/s", f)
	}
	rate := float64(total) / took.Seconds()
	return row{measure: fmt.Sprintf("initial sync (%d documents, wiped node3)", total), target: ">= 10,000 docs/s",
		figure: fmt.Sprintf("%.0f docs/s (start to synced %v%s)", rate, took.Round(time.Millisecond), inner),
		key:    "initial sync", short: fmt.Sprintf("%.0f docs/s", rate), num: rate}, nil
}

// upstreamYAML is node i's mongo.upstream setting, from -upstreams.
func upstreamYAML(i int) string {
	if *flagUpstreams == "" {
		return ""
	}
	uris := strings.Split(*flagUpstreams, ",")
	return fmt.Sprintf(", upstream: %q", strings.TrimSpace(uris[i%len(uris)]))
}
