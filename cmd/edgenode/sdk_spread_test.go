package main

import (
	"context"
	"flag"
	"fmt"
	"path"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dop251/goja"
	"github.com/gorilla/websocket"

	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/edgenode/edgenode/sdk"
)

var sdkClients = flag.Int("sdk.clients", 1000, "clients of TestSDKReconnectSpread")

// jsLoop runs one JavaScript runtime (goja) on one goroutine, the way a
// browser runs a page: timers and socket events are jobs queued to it.
// It gives the library real timers and real websockets (gorilla's client)
// and nothing else: the library is the served classic build.
type jsLoop struct {
	vm    *goja.Runtime
	jobs  chan func()
	done  chan struct{}
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[*websocket.Conn]bool
}

func newJSLoop(t *testing.T) *jsLoop {
	ctx, stop := context.WithCancel(context.Background())
	l := &jsLoop{vm: goja.New(), jobs: make(chan func(), 4096), done: make(chan struct{}), ctx: ctx, stop: stop,
		conns: map[*websocket.Conn]bool{}}
	l.install()
	go func() {
		defer close(l.done)
		for {
			select {
			case <-ctx.Done():
				return
			case f := <-l.jobs:
				f()
			}
		}
	}()
	t.Cleanup(func() {
		stop()
		<-l.done
		l.mu.Lock()
		for c := range l.conns {
			c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return l
}

// post queues f to run on the loop; false once the loop has stopped.
func (l *jsLoop) post(f func()) bool {
	select {
	case l.jobs <- f:
		return true
	case <-l.ctx.Done():
		return false
	}
}

// run runs src on the loop and returns its value exported.
func (l *jsLoop) run(t *testing.T, src string) any {
	t.Helper()
	type result struct {
		v   any
		err error
	}
	ch := make(chan result, 1)
	l.post(func() {
		v, err := l.vm.RunString(src)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		ch <- result{v.Export(), nil}
	})
	r := <-ch
	if r.err != nil {
		t.Fatalf("js %.60q: %v", src, r.err)
	}
	return r.v
}

func (l *jsLoop) install() {
	vm := l.vm
	timers := map[int64]*time.Timer{}
	var seq int64
	vm.Set("setTimeout", func(f goja.Callable, ms float64) int64 {
		seq++
		id := seq
		timers[id] = time.AfterFunc(time.Duration(ms*float64(time.Millisecond)), func() {
			l.post(func() {
				if _, ok := timers[id]; ok {
					delete(timers, id)
					_, _ = f(goja.Undefined())
				}
			})
		})
		return id
	})
	vm.Set("clearTimeout", func(id int64) {
		if tm, ok := timers[id]; ok {
			tm.Stop()
			delete(timers, id)
		}
	})
	vm.Set("nowMs", func() float64 { return float64(time.Now().UnixNano()) / 1e6 })
	// GoWebSocket(url, handlers) dials in the background and calls
	// handlers.open(), .message(data), .close(code, reason) on the loop; it
	// returns {send, close}.
	vm.Set("GoWebSocket", func(url string, h *goja.Object) *goja.Object {
		call := func(name string, args ...any) {
			l.post(func() {
				if fn, ok := goja.AssertFunction(h.Get(name)); ok {
					vals := make([]goja.Value, len(args))
					for i, a := range args {
						vals[i] = vm.ToValue(a)
					}
					_, _ = fn(goja.Undefined(), vals...)
				}
			})
		}
		var mu sync.Mutex
		var conn *websocket.Conn
		closed := false
		out := make(chan string, 64)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			c, _, err := websocket.DefaultDialer.DialContext(l.ctx, url, nil)
			if err != nil {
				call("close", 1006, err.Error())
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				return
			}
			conn = c
			mu.Unlock()
			l.mu.Lock()
			l.conns[c] = true
			l.mu.Unlock()
			defer func() {
				l.mu.Lock()
				delete(l.conns, c)
				l.mu.Unlock()
				c.Close()
			}()
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				for {
					select {
					case <-l.ctx.Done():
						return
					case s := <-out:
						if c.WriteMessage(websocket.TextMessage, []byte(s)) != nil {
							return
						}
					}
				}
			}()
			call("open")
			for {
				_, msg, err := c.ReadMessage()
				if err != nil {
					code := 1006
					if ce, ok := err.(*websocket.CloseError); ok {
						code = ce.Code
					}
					call("close", code, err.Error())
					return
				}
				call("message", string(msg))
			}
		}()
		o := vm.NewObject()
		o.Set("send", func(s string) {
			// Written by the socket's writer, in order: the loop never
			// waits for the network.
			select {
			case out <- s:
			default: // 64 frames behind: the harness is stuck; drop
			}
		})
		o.Set("close", func() {
			mu.Lock()
			closed = true
			c := conn
			mu.Unlock()
			if c != nil {
				c.Close()
			}
		})
		return o
	})
}

// The browser API over GoWebSocket, and the clients' bookkeeping.
const spreadJS = `
class WS {
  constructor(url) {
    this.g = GoWebSocket(url, {
      open: () => this.onopen && this.onopen({}),
      message: (data) => this.onmessage && this.onmessage({ data }),
      close: (code, reason) => this.onclose && this.onclose({ code, reason }),
    });
  }
  send(s) { this.g.send(s); }
  close() { this.g.close(); }
}
const env = {
  WebSocket: WS, EventSource: undefined, setTimeout, clearTimeout, now: () => Date.now(), random: () => Math.random(),
  online: () => true, hidden: () => false, listen: () => () => {},
};
// Per client: when it lost its connection, when it next tried, when it was
// subscribed again (ms since the kill, -1: not yet), the delay it chose.
const R = { killAt: 0, lost: [], tried: [], open: [], back: [], delay: [], subscribed: 0 };
function start(url, n, ch, minDelay) {
  for (let i = 0; i < n; i++) {
    R.lost.push(-1); R.tried.push(-1); R.open.push(-1); R.back.push(-1); R.delay.push(-1);
    const c = edgenode.connect({ url, env, minReconnectDelay: minDelay });
    c.on("state", (e) => {
      if (!R.killAt) return;
      const at = nowMs() - R.killAt;
      if (e.state === "disconnected" && R.lost[i] < 0) { R.lost[i] = at; R.delay[i] = e.delay; }
      if (e.state === "connecting" && R.tried[i] < 0) R.tried[i] = at;
      if (e.state === "connected" && R.open[i] < 0) R.open[i] = at;
    });
    c.subscribe(ch, { onSubscribed: () => { R.subscribed++; if (R.killAt && R.back[i] < 0) R.back[i] = nowMs() - R.killAt; } });
  }
}
`

// TestSDKReconnectSpread: 1,000 clients of the library (the served classic
// build, in a JavaScript runtime with real websockets) subscribed through
// the director to node1; kill -9 node1: they all come back on node2, and
// their attempts spread over the backoff window (full jitter) instead of
// arriving in one instant. The histograms are in the log; the check is the
// distribution (no tenth of the window holds more than a fifth of the
// attempts), not a time. make bench prints the same (section sdk).
func TestSDKReconnectSpread(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two nodes and 1,000 clients")
	}
	n := *sdkClients
	const window = 2000 // minReconnectDelay: the first retry's window, ms
	// All clients come from 127.0.0.1 (through the director): no per-address caps.
	c := newCluster(t, 2, "pubsub: {max_conns_per_ip: 0, subscribe_rate: 0}\nhttps: {limits: {max_conns_per_ip: 0}}\n")
	c.startAll()
	testkit.WaitFor(t, 20*time.Second, "two alive members", func() bool {
		st := c.states(1)
		return st["node1"] == "alive" && st["node2"] == "alive"
	})
	d := newDirector(t, []string{c.nodes[0].https, c.nodes[1].https})
	v, _ := sdk.Version(sdk.Source)
	lib, err := sdk.Dist.ReadFile(path.Join("js/dist", v, "edgenode.js"))
	if err != nil {
		t.Fatal(err)
	}
	l := newJSLoop(t)
	l.run(t, string(lib))
	l.run(t, spreadJS)
	const ch = "demo/spread"
	l.run(t, fmt.Sprintf("start(%q, %d, %q, %d)", d.plain.URL, n, ch, window))
	var subscribed int64
	testkit.WaitFor(t, 60*time.Second, fmt.Sprintf("%d clients subscribed", n), func() bool {
		subscribed = l.run(t, "R.subscribed").(int64)
		return subscribed == int64(n)
	})
	if got := presenceAt(t, c.nodes[0], adminTokenOf(t, c.nodes[0]), ch); got != n {
		t.Fatalf("node1 has %d subscribers, want %d", got, n)
	}

	l.run(t, "R.killAt = nowMs()")
	c.nodes[0].cmd.Process.Signal(syscall.SIGKILL)
	testkit.WaitFor(t, 90*time.Second, fmt.Sprintf("%d clients subscribed again", n), func() bool {
		return l.run(t, "R.back.filter((x) => x >= 0).length").(int64) == int64(n)
	})
	testkit.WaitFor(t, 20*time.Second, "node2 has them all", func() bool {
		return presenceAt(t, c.nodes[1], adminTokenOf(t, c.nodes[1]), ch) == n
	})
	// Per client, from its loss: the delay the library chose, when its
	// timer fired and the retry started, when it was subscribed again.
	chosen := l.run(t, "R.delay").([]any)
	wait := l.run(t, "R.tried.map((x, i) => x - R.lost[i])").([]any)
	open := l.run(t, "R.open.map((x, i) => x - R.lost[i])").([]any)
	back := l.run(t, "R.back.map((x, i) => x - R.lost[i])").([]any)
	hist := func(vals []any, width float64, slots int) ([]int, int) { // the last slot takes what is over
		h := make([]int, slots)
		over := 0
		for _, x := range vals {
			f := toFloat(x)
			i := int(f / width)
			if i >= slots {
				over++
				i = slots - 1
			}
			h[max(0, i)]++
		}
		return h, over
	}
	hc, overChosen := hist(chosen, float64(window/10), 10)
	hw, late := hist(wait, float64(window/10), 10)
	ho, _ := hist(open, float64(window/10), 10)
	// Subscribed again: the retry, the handshakes, and node2's first
	// subscriber of the channel waiting for its peers' sync answers (the
	// dead node1 never answers: at most the sync timeout, 2 s).
	longest := 0.0
	for _, x := range back {
		longest = max(longest, toFloat(x))
	}
	bw := max(100, 100*int(longest/1000+1))
	hb, _ := hist(back, float64(bw), 10)
	t.Logf("SPREAD %d clients, kill -9 of their node, first retry window %d ms (full jitter); per client, from its loss:", n, window)
	t.Logf("SPREAD %s", histLine("delay chosen", hc, window/10))
	t.Logf("SPREAD %s", histLine("retry started", hw, window/10))
	t.Logf("SPREAD %s", histLine("connected to node2", ho, window/10))
	t.Logf("SPREAD %s", histLine("subscribed on node2", hb, bw))
	busiest := func(h []int) int {
		m := 0
		for _, x := range h {
			m = max(m, x)
		}
		return m
	}
	t.Logf("SPREAD busiest tenth of the window: %.1f%% of the delays chosen, %.1f%% of the retries started (uniform: 10%%); %d retries started after the window (the runtime's timers late under load)",
		100*float64(busiest(hc))/float64(n), 100*float64(busiest(hw))/float64(n), late)
	// The check is the library's: every client chose its delay within the
	// window, spread over it. When the timers fired depends on the
	// machine's load (logged above), and so does the subscribe (the
	// server's work).
	if overChosen > 0 {
		t.Errorf("%d delays beyond the %d ms window", overChosen, window)
	}
	if b := busiest(hc); b > n/5 {
		t.Errorf("%d of %d delays in one tenth of the window: not spread", b, n)
	}
	for i, x := range wait {
		if toFloat(x) < toFloat(chosen[i]) {
			t.Fatalf("client %d retried %v ms after its loss, before its delay of %v ms", i, x, chosen[i])
		}
	}
}

func toFloat(x any) float64 {
	switch v := x.(type) {
	case int64:
		return float64(v)
	case float64:
		return v
	}
	return -1
}

func histLine(what string, h []int, width int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-20s", what)
	for i, x := range h {
		fmt.Fprintf(&b, " %d-%dms:%d", i*width, (i+1)*width, x)
	}
	return b.String()
}
