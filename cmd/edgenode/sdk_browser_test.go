package main

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/edgenode/edgenode/internal/web"
)

// sdkPage is the tests' page: edgenode.js loaded from the node with its
// integrity hash (so the browser checks the manifest's hash), and the ES
// module imported, one client subscribed to ?channel=.
func sdkPage(s *web.SDK) string {
	return `<!doctype html><meta charset="utf-8"><title>edgenode.js</title>
<script src="/sdk/v1/` + s.Latest + `/edgenode.js" integrity="` + s.Integrity + `" crossorigin="anonymous"></script>
<script type="module">import { version } from "/sdk/v1/edgenode.mjs"; window.MODULE_VERSION = version;</script>
<script>
window.T = { states: [], got: [], reloads: 0, errors: [], subscribed: 0 };
const c = window.C = edgenode.connect({ url: location.origin, minReconnectDelay: 1000 });
c.on("state", (e) => T.states.push(e.state + "/" + e.transport));
const S = window.S = c.subscribe(new URLSearchParams(location.search).get("channel"), {
  onSubscribed: () => T.subscribed++,
  onMessage: (d) => T.got.push(d.n),
  onMustReload: () => T.reloads++,
  onError: (e) => T.errors.push(e.code),
});
// askPresence asks for the channel's presence count, one question at a
// time and at most 5 a second (questions share the subscribe rate).
window.askPresence = () => {
  if (T.asking) return;
  T.asking = true;
  S.presence().then((r) => { T.presence = r.count; }, (e) => { T.presenceErr = e.code; })
    .finally(() => setTimeout(() => { T.asking = false; }, 200));
};
</script>`
}

// TestBrowserSDK: headless Chromium runs edgenode.js from a real node
// against a 3-node cluster behind the director (DNS's stand-in): subscribe
// and receive; kill -9 the node the page is on, publish meanwhile, and the
// page reconnects to another node and gets exactly what it missed (or
// must_reload, per the recovery rules); and with websocket upgrades refused
// on the way, the library falls back to SSE and receives.
func TestBrowserSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three nodes and a browser")
	}
	if chromiumPath() == "" {
		t.Skip("no Chromium: apt-get install chromium chromium-driver (.ci/run does)")
	}
	c := newCluster(t, 3, "pubsub: {max_conns_per_ip: 0}\n")
	c.startAll()
	testkit.WaitFor(t, 20*time.Second, "three alive members on every node", func() bool {
		for i := range 3 {
			st := c.states(i)
			if len(st) != 3 || st["node1"] != "alive" || st["node2"] != "alive" || st["node3"] != "alive" {
				return false
			}
		}
		return true
	})
	sdk, err := web.NewSDK()
	if err != nil {
		t.Fatal(err)
	}
	d := newDirector(t, []string{c.nodes[0].https, c.nodes[1].https, c.nodes[2].https})
	page := sdkPage(sdk)
	d.page.Store(&page)
	b := newBrowser(t, []string{d.pin()})
	tok := adminTokenOf(t, c.nodes[2])
	presence := func(i int, ch string) string {
		return fmt.Sprint(presenceAt(t, c.nodes[i], adminTokenOf(t, c.nodes[i]), ch))
	}

	// Subscribe and receive.
	const ch = "demo/sdk-kill"
	p := b.tab()
	b.do(p, "open the page", chromedp.Navigate(d.https.URL+"/page.html?channel="+ch))
	b.waitJS(p, 20*time.Second, "subscribed", `window.T && T.subscribed === 1`)
	if v := eval[string](b, p, `window.MODULE_VERSION || ""`); v != sdk.Latest {
		t.Fatalf("the ES module says version %q, want %s", v, sdk.Latest)
	}
	if tr := eval[string](b, p, `C.transport`); tr != "websocket" {
		t.Fatalf("transport %q, want websocket", tr)
	}
	publish(t, c.nodes[2], tok, ch, `{"n":1}`)
	b.waitJS(p, 10*time.Second, "message 1", `T.got.length === 1`)
	testkit.WaitFor(t, 10*time.Second, "the page's subscription on node1", func() bool { return presence(0, ch) == "1" })

	// kill -9 node1; the director routes nowhere until messages 2-6 are
	// published (on node3), so they are published while the page is away.
	d.hold.Store(true)
	c.nodes[0].cmd.Process.Signal(syscall.SIGKILL)
	b.waitJS(p, 10*time.Second, "the page sees the connection lost", `C.state !== "connected"`)
	for n := 2; n <= 6; n++ {
		publish(t, c.nodes[2], tok, ch, fmt.Sprintf(`{"n":%d}`, n))
	}
	d.hold.Store(false)
	b.waitJS(p, 30*time.Second, "resubscribed on another node", `T.subscribed === 2`)
	publish(t, c.nodes[2], tok, ch, `{"n":7}`)
	b.waitJS(p, 10*time.Second, "message 7", `T.got.includes(7)`)
	got := eval[[]int](b, p, `T.got`)
	reloads := eval[int](b, p, `T.reloads`)
	t.Logf("after kill -9 of node1: got %v, must_reload %d, states %v", got, reloads, eval[[]string](b, p, `T.states`))
	if reloads == 0 && fmt.Sprint(got) != "[1 2 3 4 5 6 7]" {
		t.Fatalf("got %v without must_reload, want [1 2 3 4 5 6 7]: every message once, in order", got)
	}
	if reloads > 0 && !strings.HasSuffix(fmt.Sprint(got), " 7]") {
		t.Fatalf("after must_reload got %v, want live messages to go on", got)
	}
	testkit.WaitFor(t, 10*time.Second, "the page's subscription on node2", func() bool { return presence(1, ch) == "1" })

	// Presence from the page (sub.presence(), the websocket presence
	// frame): 1 with one page on a channel, then 2 once a second page
	// subscribes (on whichever node the director sends it to: the count
	// is the cluster's, so it may take a presence report to arrive).
	const ch3 = "demo/sdk-presence"
	r1 := b.tab()
	b.do(r1, "open the first presence page", chromedp.Navigate(d.https.URL+"/page.html?channel="+ch3))
	b.waitJS(r1, 20*time.Second, "first page subscribed", `window.T && T.subscribed === 1`)
	b.waitJS(r1, 20*time.Second, "presence 1", `(askPresence(), T.presence === 1)`)
	r2 := b.tab()
	b.do(r2, "open the second presence page", chromedp.Navigate(d.https.URL+"/page.html?channel="+ch3))
	b.waitJS(r2, 20*time.Second, "second page subscribed", `window.T && T.subscribed === 1`)
	b.waitJS(r1, 20*time.Second, "presence 2 on the first page", `(askPresence(), T.presence === 2)`)
	b.waitJS(r2, 20*time.Second, "presence 2 on the second page", `(askPresence(), T.presence === 2)`)
	if e := eval[string](b, r1, `T.presenceErr || ""`); e != "" {
		t.Fatalf("a presence question was refused: %s", e)
	}

	// Websockets refused by a proxy on the way: SSE, detected.
	d.blockWS.Store(true)
	const ch2 = "demo/sdk-sse"
	q := b.tab()
	b.do(q, "open the page behind a proxy without websockets", chromedp.Navigate(d.https.URL+"/page.html?channel="+ch2))
	b.waitJS(q, 20*time.Second, "subscribed over SSE", `window.T && T.subscribed === 1`)
	if tr := eval[string](b, q, `C.transport`); tr != "sse" {
		t.Fatalf("transport %q, want sse", tr)
	}
	if d.refused.Load() == 0 {
		t.Fatal("the library did not try a websocket first")
	}
	publish(t, c.nodes[2], tok, ch2, `{"n":1}`)
	b.waitJS(q, 10*time.Second, "message over SSE", `T.got.length === 1 && T.got[0] === 1`)
	// SSE has no way to ask: presence is refused at once, with a code.
	b.waitJS(q, 10*time.Second, "presence refused over SSE", `(askPresence(), T.presenceErr === "sse")`)
	t.Logf("websockets refused (%d upgrades): states %v", d.refused.Load(), eval[[]string](b, q, `T.states`))
}
