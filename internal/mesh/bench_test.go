package mesh

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/testkit"
)

// linkPair starts two nodes and waits until a's link to b is up.
func linkPair(b *testing.B, queueLen int) (*testNode, *testNode) {
	c := newCluster(b)
	oa := c.options("a")
	oa.QueueLen = queueLen
	oa.QueueBytes = 1 << 30
	a := c.start(oa)
	ob := c.options("b")
	ob.QueueLen = queueLen
	ob.QueueBytes = 1 << 30
	nb := c.start(ob)
	waitMap(b, a, settle, "2 alive", allState([]string{"a", "b"}, nodemap.Alive))
	testkit.WaitFor(b, settle, "link up", func() bool { return peerMetric(a, descLinkUp, "b") == 1 })
	return a, nb
}

// BenchmarkLinkThroughput: one-way messages from a to b, as fast as the
// queue takes them. Reports msgs/s; bytes/s via SetBytes.
func BenchmarkLinkThroughput(b *testing.B) {
	for _, size := range []int{200, 64 << 10} {
		b.Run(sizeName(size), func(b *testing.B) {
			a, nb := linkPair(b, 1<<16)
			var got atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			nb.Handle("bench", func(_ string, msg []byte) {
				if got.Add(1) == target {
					close(done)
				}
			})
			msg := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; {
				err := a.Send("b", "bench", msg)
				if err == nil {
					i++
					continue
				}
				if !errors.Is(err, ErrQueueFull) {
					b.Fatal(err)
				}
				// The queue is the back-pressure: let the writer run.
				time.Sleep(50 * time.Microsecond)
			}
			select {
			case <-done:
			case <-time.After(2 * time.Minute):
				b.Fatalf("b got %d of %d", got.Load(), b.N)
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
		})
	}
}

// BenchmarkLinkLatency: ping-pong between a and b; one op is a round trip.
func BenchmarkLinkLatency(b *testing.B) {
	for _, size := range []int{200, 64 << 10} {
		b.Run(sizeName(size), func(b *testing.B) {
			a, nb := linkPair(b, 1024)
			nb.Handle("ping", func(from string, msg []byte) {
				_ = nb.Send(from, "pong", msg)
			})
			pong := make(chan struct{}, 1)
			a.Handle("pong", func(string, []byte) { pong <- struct{}{} })
			msg := make([]byte, size)
			// Warm up both directions' streams.
			for range 10 {
				_ = a.Send("b", "ping", msg)
				<-pong
			}
			rtts := make([]time.Duration, 0, b.N)
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if err := a.Send("b", "ping", msg); err != nil {
					b.Fatal(err)
				}
				select {
				case <-pong:
				case <-time.After(10 * time.Second):
					b.Fatal("pong lost")
				}
				rtts = append(rtts, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(rtts)
			b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-rtt-µs")
			b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-rtt-µs")
		})
	}
}

func sizeName(n int) string {
	if n >= 1024 {
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// BenchmarkJoin: time from starting n nodes (each seeded with the first)
// until every node's map shows all n alive. Default ("wan") timings.
func BenchmarkJoin(b *testing.B) {
	for _, n := range []int{3, 20} {
		b.Run(fmt.Sprintf("%dnodes", n), func(b *testing.B) {
			var total time.Duration
			for range b.N {
				c := newCluster(b)
				ids := make([]string, n)
				opts := make([]Options, n)
				for i := range n {
					ids[i] = fmt.Sprintf("n%02d", i)
					opts[i] = c.options(ids[i])
					opts[i].Profile = ""
				}
				start := time.Now()
				var nodes []*testNode
				for _, o := range opts {
					nodes = append(nodes, c.start(o))
				}
				waitAll(b, nodes, "all alive", allState(ids, nodemap.Alive))
				total += time.Since(start)
				b.StopTimer()
				leaveAll(nodes)
				b.StartTimer()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "join-ms")
		})
	}
}

// BenchmarkFailureDetection: kill one node of n abruptly (sockets closed,
// no leave) and time until every other node's map shows it dead; then
// restart it and time the rejoin. Several rounds per run; reports mean and
// worst detection, the documented bound, and false "dead" verdicts about
// nodes that were never killed. The busy variants run a separate process
// that keeps one core saturated.
func BenchmarkFailureDetection(b *testing.B) {
	for _, tc := range []struct {
		n    int
		busy bool
	}{{3, false}, {20, false}, {3, true}, {20, true}} {
		name := fmt.Sprintf("%dnodes", tc.n)
		if tc.busy {
			name += "-busy"
		}
		b.Run(name, func(b *testing.B) {
			const rounds = 3
			c := newCluster(b)
			ids := make([]string, tc.n)
			var nodes []*testNode
			for i := range tc.n {
				ids[i] = fmt.Sprintf("n%02d", i)
				o := c.options(ids[i])
				o.Profile = ""
				nodes = append(nodes, c.start(o))
			}
			waitAll(b, nodes, "all alive", allState(ids, nodemap.Alive))
			tuning := nodes[0].o.tuning

			if tc.busy {
				// "Other work" saturating one core: a separate process
				// spinning, as on a real machine where the node shares the
				// CPU with something else.
				spin := exec.Command(os.Args[0], "-test.run=^TestSpinHelperProcess$")
				spin.Env = append(os.Environ(), spinEnv+"=1")
				if err := spin.Start(); err != nil {
					b.Fatal(err)
				}
				defer func() { _ = spin.Process.Kill(); _ = spin.Wait() }()
			}
			// Watch every map for "dead" verdicts about nodes not killed.
			var falseDead atomic.Int64
			var victimID atomic.Value
			victimID.Store("")
			wctx, wcancel := context.WithCancel(context.Background())
			var watchWG sync.WaitGroup
			for _, n := range nodes {
				watchWG.Add(1)
				go func() {
					defer watchWG.Done()
					seen := map[string]bool{}
					for {
						mp, ch := n.Current()
						for _, nd := range mp.Nodes {
							dead := nd.State == nodemap.Dead
							if dead && !seen[nd.ID] && nd.ID != victimID.Load().(string) {
								falseDead.Add(1)
							}
							seen[nd.ID] = dead
						}
						select {
						case <-ch:
						case <-wctx.Done():
							return
						}
					}
				}()
			}

			var detect, rejoin []time.Duration
			b.ResetTimer()
			for range b.N {
				for r := range rounds {
					vi := 1 + r%(tc.n-1)
					victim := nodes[vi]
					victimID.Store(victim.opts.NodeID)
					var others []*testNode
					for i, n := range nodes {
						if i != vi {
							others = append(others, n)
						}
					}
					start := time.Now()
					victim.kill()
					waitAll(b, others, "victim dead", stateOf(victim.opts.NodeID, nodemap.Dead))
					detect = append(detect, time.Since(start))

					o := victim.opts
					o.Seeds = []string{nodes[0].opts.BindAddr}
					start = time.Now()
					nodes[vi] = c.startNoSeedUpdate(o)
					waitAll(b, nodes, "victim back", allState(ids, nodemap.Alive))
					rejoin = append(rejoin, time.Since(start))
					victimID.Store("")
				}
			}
			b.StopTimer()
			wcancel()
			watchWG.Wait()
			var sum time.Duration
			for _, d := range detect {
				sum += d
			}
			var rsum time.Duration
			for _, d := range rejoin {
				rsum += d
			}
			b.ReportMetric(float64(sum.Milliseconds())/float64(len(detect)), "detect-mean-ms")
			b.ReportMetric(float64(slices.Max(detect).Milliseconds()), "detect-max-ms")
			b.ReportMetric(float64(tuning.DetectionBound(tc.n).Milliseconds()), "bound-ms")
			b.ReportMetric(float64(rsum.Milliseconds())/float64(len(rejoin)), "rejoin-mean-ms")
			b.ReportMetric(float64(falseDead.Load()), "false-dead")
			leaveAll(nodes)
		})
	}
}

// waitAll waits until cond holds on every node, concurrently.
func waitAll(b testing.TB, nodes []*testNode, what string, cond func(*nodemap.Map) bool) {
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.NewTimer(2 * time.Minute)
			defer deadline.Stop()
			for {
				mp, ch := n.Current()
				if cond(mp) {
					return
				}
				select {
				case <-ch:
				case <-deadline.C:
					b.Errorf("%s: timed out waiting for %s: %s", n.opts.NodeID, what, describe(mp))
					return
				}
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

func leaveAll(nodes []*testNode) {
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = n.Leave(ctx)
		}()
	}
	wg.Wait()
}

const spinEnv = "MESH_SPIN_HELPER"

// TestSpinHelperProcess is not a test: it is the CPU hog of the busy
// failure-detection benchmarks. It spins on one thread until killed.
func TestSpinHelperProcess(t *testing.T) {
	if os.Getenv(spinEnv) == "" {
		t.Skip("helper process for BenchmarkFailureDetection")
	}
	runtime.GOMAXPROCS(1)
	x := 0
	for {
		x++
		if x < 0 {
			fmt.Println(x)
		}
	}
}
