package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	mdns "github.com/miekg/dns"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/edgenode/edgenode/internal/pubsub"
	"github.com/edgenode/edgenode/internal/testkit"
)

// reloads is edgenode_config_reloads_total{result} on the node's /metrics;
// -1 when it cannot be read.
func reloads(p *nodeProc, result string) float64 {
	resp, err := http.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return -1
	}
	for _, m := range fams["edgenode_config_reloads_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "result" && l.GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// reload writes cfg over the node's config file, sends SIGHUP and waits
// until the node counts one more reload with result.
func reload(t *testing.T, p *nodeProc, cfg, result string) {
	t.Helper()
	before := reloads(p, result)
	if err := os.WriteFile(p.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	testkit.WaitFor(t, 20*time.Second, "reload "+result, func() bool { return reloads(p, result) == before+1 })
}

// logged reports whether the node's output holds every one of substrs
// within a few seconds: its log line is written before the reload counter
// moves, but reaches the test through a pipe a moment later (CI saw the
// one-shot check miss it).
func logged(p *nodeProc, substrs ...string) bool {
	return testkit.Poll(10*time.Second, func() bool {
		for _, s := range substrs {
			if !p.out.Contains(s) {
				return false
			}
		}
		return true
	})
}

// dnsA is the A records the node answers for name over UDP.
func dnsA(t *testing.T, p *nodeProc, name string) []string {
	t.Helper()
	q := new(mdns.Msg)
	q.SetQuestion(name, mdns.TypeA)
	r, _, err := (&mdns.Client{Timeout: 5 * time.Second}).Exchange(q, p.dns)
	if err != nil {
		t.Fatalf("dns %s: %v", name, err)
	}
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			out = append(out, a.A.String())
		}
	}
	return out
}

// trySubscribe subscribes a new websocket to channel with token and
// returns the answer: "subscribed", or the error frame's code.
func trySubscribe(t *testing.T, p *nodeProc, channel, token string) string {
	t.Helper()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	ws, _, err := d.Dial("wss://"+p.https+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteJSON(map[string]string{"type": "subscribe", "channel": channel, "token": token}); err != nil {
		t.Fatal(err)
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f struct{ Type, Code string }
	if err := ws.ReadJSON(&f); err != nil {
		t.Fatalf("subscribe %s: %v", channel, err)
	}
	if f.Type == "subscribed" {
		return f.Type
	}
	return f.Code
}

// nextFrameMessage reads ws's next frame, which must be a message (no
// error frame, no must_reload, no close).
func nextFrameMessage(t *testing.T, ws *websocket.Conn) frame {
	t.Helper()
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f frame
	if err := ws.ReadJSON(&f); err != nil {
		t.Fatalf("the subscriber's websocket: %v", err)
	}
	if f.Type != "message" {
		t.Fatalf("the subscriber got %+v, want a message", f)
	}
	return f
}

func postStatus(t *testing.T, c *http.Client, url string, size int) int {
	t.Helper()
	resp, err := c.Post(url, "text/plain", strings.NewReader(strings.Repeat("x", size)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func namedApp(t *testing.T, name string) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) }))
	t.Cleanup(s.Close)
	return s
}

// reloadConfig is the config of TestReloadUnderLiveTraffic: the parts it
// reloads on, with what changes at each step.
func reloadConfig(t *testing.T, base string, s reloadStep) string {
	return mergeYAML(t, base, fmt.Sprintf(`
node: {region: %s}
log: {level: %s}
https:
  app_server: %s
  limits: {max_body_bytes: %d}
dns:
  zones:
    - origin: edgenode.test.
      ns: [ns1.edgenode.test.]
      mbox: hostmaster.edgenode.test.
      records:
        - {name: ns1, type: A, value: 127.0.0.1}
        - {name: www, type: A, value: %s}
pubsub:
  max_message_bytes: %d
  tenants:
    - {name: demo, public: ["*"]}
    - {name: acme, secret: %s}
cdn: {max_entries: %d}
`, s.region, s.level, s.app, s.maxBody, s.www, s.maxMessage, s.secret, s.maxEntries))
}

type reloadStep struct {
	region, level, app, www, secret string
	maxBody, maxMessage, maxEntries int
}

// One node under live traffic; one SIGHUP changes a DNS record, a tenant's
// secret, a pubsub limit, a CDN limit, an HTTPS limit, the app server, the
// log level, and a key that needs a restart. Throughout, a websocket
// subscriber keeps its connection and gets every message, never
// must_reload. Then a config with problems changes nothing.
func TestReloadUnderLiveTraffic(t *testing.T) {
	appA, appB := namedApp(t, "app-A"), namedApp(t, "app-B")
	secret1, secret2 := strings.Repeat("s1", 16), strings.Repeat("s2", 16)
	base, p := nodeConfig(t, "mongo: {enabled: false}")
	before := reloadStep{region: "r1", level: "debug", app: appA.URL, www: "192.0.2.1", secret: secret1,
		maxBody: 1 << 20, maxMessage: 64 << 10, maxEntries: 100}
	startNode(t, reloadConfig(t, base, before), p)
	token := adminTokenOf(t, p)
	c := httpsClient(true)
	origin := filepath.Join(p.dataDir, "origin", "demo")
	if err := os.MkdirAll(origin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"a.txt", "b.txt"} {
		if err := os.WriteFile(filepath.Join(origin, f), []byte("media "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	ws := subscribeWS(t, p, "demo/live")
	seq := 0
	publishAndSee := func(when string) {
		t.Helper()
		seq++
		data := fmt.Sprintf(`{"n":%d}`, seq)
		if code := publish(t, p, token, "demo/live", data); code != 200 {
			t.Fatalf("%s: publish: %d", when, code)
		}
		if f := nextFrameMessage(t, ws); string(f.Data) != data {
			t.Fatalf("%s: the subscriber got %s, want %s", when, f.Data, data)
		}
	}
	sign := func(secret string) string {
		tok, err := pubsub.SignHS256(pubsub.TokenClaims{Tenant: "acme", Channel: "acme/private", Exp: time.Now().Add(time.Hour).Unix()}, []byte(secret))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	big := `{"text":"` + strings.Repeat("y", 2000) + `"}`

	// Before: everything as first configured.
	publishAndSee("before")
	if got := dnsA(t, p, "www.edgenode.test."); len(got) != 1 || got[0] != "192.0.2.1" {
		t.Fatalf("www before: %v", got)
	}
	if got := trySubscribe(t, p, "acme/private", sign(secret1)); got != "subscribed" {
		t.Fatalf("acme with the first secret: %s", got)
	}
	if code := publish(t, p, token, "demo/other", big); code != 200 {
		t.Fatalf("a 2 kB message before: %d", code)
	}
	if _, body := get(t, c, "https://"+p.https+"/"); body != "app-A" {
		t.Fatalf("app before: %q", body)
	}
	if code := postStatus(t, c, "https://"+p.https+"/upload", 4096); code != 200 {
		t.Fatalf("a 4 kB body before: %d", code)
	}
	for _, f := range []string{"a.txt", "b.txt"} {
		if resp, body := get(t, c, "https://"+p.https+"/media/demo/"+f); resp.StatusCode != 200 || body != "media "+f {
			t.Fatalf("media %s: %d %q", f, resp.StatusCode, body)
		}
	}
	testkit.WaitFor(t, 10*time.Second, "two cached entries", func() bool { return metricValue(t, p.admin, "edgenode_cdn_entries") == "2" })
	infoLines := p.out.Count(`msg="reloading the config"`)
	version := func() string {
		_, body := get(t, http.DefaultClient, "http://"+p.admin+"/status.json")
		var st struct{ Members []memberView }
		if err := json.Unmarshal([]byte(body), &st); err != nil || len(st.Members) != 1 {
			t.Fatalf("status.json: %v %s", err, body)
		}
		return st.Members[0].ConfigVersion
	}
	v0 := version()

	// One reload changes every kind at once.
	after := reloadStep{region: "r2", level: "warn", app: appB.URL, www: "192.0.2.99", secret: secret2,
		maxBody: 1024, maxMessage: 1024, maxEntries: 1}
	// check-config -running says, before the reload, what it will do.
	if err := os.WriteFile(p.cfgPath, []byte(reloadConfig(t, base, after)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binPath, "check-config", "-running", p.cfgPath).CombinedOutput()
	if err != nil {
		t.Fatalf("check-config -running: %v\n%s", err, out)
	}
	for _, want := range []string{
		"a reload applies: log.level, https.app_server, https.limits.max_body_bytes, dns.zones, cdn.max_entries, pubsub.tenants, pubsub.max_message_bytes\n",
		"changed but needs a restart: node.region\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("check-config -running says\n%s\nwant %q", out, want)
		}
	}
	reload(t, p, reloadConfig(t, base, after), "ok")

	publishAndSee("after the reload")
	if v := version(); v == "" || v == v0 {
		t.Errorf("config_version in the node map: %q after the reload, %q before", v, v0)
	}
	if got := dnsA(t, p, "www.edgenode.test."); len(got) != 1 || got[0] != "192.0.2.99" {
		t.Errorf("www after: %v, want the new record", got)
	}
	if got := trySubscribe(t, p, "acme/private", sign(secret2)); got != "subscribed" {
		t.Errorf("acme with the new secret: %s", got)
	}
	if got := trySubscribe(t, p, "acme/private", sign(secret1)); got == "subscribed" {
		t.Errorf("acme with the old secret: accepted")
	}
	if code := publish(t, p, token, "demo/other", big); code == 200 {
		t.Errorf("a 2 kB message over pubsub.max_message_bytes 1024: accepted")
	}
	if _, body := get(t, c, "https://"+p.https+"/"); body != "app-B" {
		t.Errorf("app after: %q, want app-B", body)
	}
	if code := postStatus(t, c, "https://"+p.https+"/upload", 4096); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a 4 kB body over https.limits.max_body_bytes 1024: %d", code)
	}
	if v := metricValue(t, p.admin, "edgenode_cdn_entries"); v != "1" {
		t.Errorf("cdn entries after cdn.max_entries 1: %s", v)
	}
	if !logged(p, "config changed but needs a restart: node.region") {
		t.Errorf("the restart key is not named in the log")
	}
	if v := metricValue(t, p.admin, "edgenode_config_restart_pending"); v != "1" {
		t.Errorf("edgenode_config_restart_pending: %s", v)
	}
	// Log level warn: the next reload's Info line is not written.
	reload(t, p, reloadConfig(t, base, after), "ok")
	if n := p.out.Count(`msg="reloading the config"`); n != infoLines+1 {
		t.Errorf(`"reloading the config" written %d times after log.level warn, want %d`, n, infoLines+1)
	}

	// A config with problems changes nothing and names every problem.
	bad := mergeYAML(t, reloadConfig(t, base, before), `
pubsub: {max_message_bytes: 0}
dns: {rate_limit: {slip: -1}}
`)
	reload(t, p, bad, "invalid")
	if !logged(p, "pubsub.max_message_bytes", "dns.rate_limit.slip") {
		t.Errorf("the refused reload does not name every problem")
	}
	publishAndSee("after a refused reload")
	if got := dnsA(t, p, "www.edgenode.test."); len(got) != 1 || got[0] != "192.0.2.99" {
		t.Errorf("www after a refused reload: %v", got)
	}
	if _, body := get(t, c, "https://"+p.https+"/"); body != "app-B" {
		t.Errorf("app after a refused reload: %q", body)
	}
}

// A 2-node cluster rotates its gossip key by reloads, one step at a time
// on both nodes (add the new key, make it primary, remove the old), and
// stays together: each node sees the other alive after every step, and
// the config version each gossips follows its reloads.
func TestReloadGossipKeyRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := newCluster(t, 2, "mongo: {enabled: false}")
	oldKey, err := os.ReadFile(gossipKeyFile(t, c.cfgs[0]))
	if err != nil {
		t.Fatal(err)
	}
	k := make([]byte, 32)
	rand.Read(k)
	newKey := base64.StdEncoding.EncodeToString(k)
	old := strings.TrimSpace(string(oldKey))
	c.startAll()
	together := func(step string) {
		t.Helper()
		testkit.WaitFor(t, 30*time.Second, "both nodes alive to each other "+step, func() bool {
			return c.states(0)["node2"] == "alive" && c.states(1)["node1"] == "alive"
		})
	}
	together("at start")
	v0 := c.members(0)["node1"].ConfigVersion
	for _, step := range []struct {
		name string
		keys []string
	}{
		{"new key added", []string{old, newKey}},
		{"new key primary", []string{newKey, old}},
		{"old key removed", []string{newKey}},
	} {
		for i := range c.nodes {
			keys := `mesh: {gossip_keys: ["` + strings.Join(step.keys, `", "`) + `"]}`
			c.cfgs[i] = mergeYAML(t, c.cfgs[i], keys)
			reload(t, c.nodes[i], c.cfgs[i], "ok")
		}
		together("after " + step.name)
	}
	// node2 sees node1's new config version.
	testkit.WaitFor(t, 30*time.Second, "node1's new config version on node2", func() bool {
		v := c.members(0)["node1"].ConfigVersion
		return v != "" && v != v0 && c.members(1)["node1"].ConfigVersion == v
	})
	// A reload that one part cannot take (a 10-byte key passes validation,
	// the keyring refuses it) changes nothing, not even what other parts
	// could take: here a new dynamic name.
	short := base64.StdEncoding.EncodeToString(make([]byte, 10))
	refused := mergeYAML(t, c.cfgs[0], `{mesh: {gossip_keys: ["`+short+`"]}, dns: {dynamic: [{name: widget.edgenode.test., count: 3}, {name: other.edgenode.test.}]}}`)
	reload(t, c.nodes[0], refused, "refused")
	if got := dnsA(t, c.nodes[0], "other.edgenode.test."); len(got) != 0 {
		t.Errorf("a refused reload added a dynamic name: %v", got)
	}
	if !c.nodes[0].out.Contains("mesh.gossip_keys[0]: 10 bytes") {
		t.Errorf("the refused reload does not say why")
	}
	together("after a refused reload")
	for i, p := range c.nodes {
		if p.out.Contains("gossip keyring not changed") || p.out.Count(`msg="gossip keyring changed"`) != 3 ||
			!p.out.Contains(`msg="gossip keyring changed" part=mesh keys=1`) {
			t.Errorf("node%d: not every keyring step was taken", i+1)
		}
	}
}

// gossipKeyFile is the gossip key file a newCluster config names.
func gossipKeyFile(t *testing.T, cfg string) string {
	t.Helper()
	i := strings.Index(cfg, "gossip.key")
	if i < 0 {
		t.Fatal("no gossip key file in the cluster config")
	}
	j := strings.LastIndex(cfg[:i], " ")
	return cfg[j+1 : i+len("gossip.key")]
}
