package web

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/nodemap"
)

func testNodes() []nodemap.Node {
	return []nodemap.Node{
		{ID: "node1", Region: "eu", Lat: 50.1, Lon: 8.7, State: nodemap.Alive, Self: true, Load: 0.5, Ready: true},
		{ID: "node2", Region: "us", Lat: 40.7, Lon: -74, State: nodemap.Alive, Ready: true},
		{ID: "node3", Region: "nowhere", State: nodemap.Alive, Ready: true},
	}
}

// partMetrics registers the metric families the page reads, with the names
// and types the parts register them under.
type partMetrics struct {
	conns   prometheus.Gauge
	reqs    *prometheus.CounterVec
	subs    prometheus.Gauge
	dns     *prometheus.CounterVec
	cdn     *prometheus.CounterVec
	cdnDisk prometheus.Gauge
	lag     *prometheus.GaugeVec
	lagOps  *prometheus.GaugeVec
}

func newPartMetrics(reg *prometheus.Registry) *partMetrics {
	m := &partMetrics{
		conns:   prometheus.NewGauge(prometheus.GaugeOpts{Name: metricHTTPConns, Help: "x"}),
		reqs:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricHTTPReqs, Help: "x"}, []string{"route", "code"}),
		subs:    prometheus.NewGauge(prometheus.GaugeOpts{Name: metricSubs, Help: "x"}),
		dns:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricDNSQueries, Help: "x"}, []string{"type"}),
		cdn:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricCDNRequests, Help: "x"}, []string{"result"}),
		cdnDisk: prometheus.NewGauge(prometheus.GaugeOpts{Name: metricCDNBytes, Help: "x"}),
		lag:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: metricReplLagSeconds, Help: "x"}, []string{"peer", "shard"}),
		lagOps:  prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: metricReplLagOps, Help: "x"}, []string{"peer"}),
	}
	reg.MustRegister(m.conns, m.reqs, m.subs, m.dns, m.cdn, m.cdnDisk, m.lag, m.lagOps)
	return m
}

func TestFiguresFromRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := newPartMetrics(reg)
	var h history
	t0 := time.Unix(1000, 0)
	parts := map[string]bool{"https": true, "dns": true, "cdn": true, "pubsub": true}
	fams, _ := reg.Gather()
	h.add(takeSample(fams, t0, parts))
	f := h.figures()
	if f.Conns == nil || *f.Conns != 0 || f.DNSQPS == nil || f.CacheHit != nil {
		t.Fatalf("first sample: %+v", f)
	}
	m.conns.Set(7)
	m.subs.Set(3)
	m.reqs.WithLabelValues("/", "200").Add(40)
	m.reqs.WithLabelValues("/x", "404").Add(10)
	m.dns.WithLabelValues("A").Add(100)
	m.cdn.WithLabelValues("hit").Add(3)
	m.cdn.WithLabelValues("stale").Add(1)
	m.cdn.WithLabelValues("miss").Add(4)
	m.cdnDisk.Set(4096)
	m.lag.WithLabelValues("node2", "node1").Set(0.25)
	m.lag.WithLabelValues("node2", "node3").Set(0.5)
	m.lag.WithLabelValues("node3", "node1").Set(0)
	m.lagOps.WithLabelValues("node2").Set(12)
	fams, _ = reg.Gather()
	h.add(takeSample(fams, t0.Add(10*time.Second), parts))
	f = h.figures()
	check := func(name string, p *float64, want float64) {
		t.Helper()
		if p == nil || *p != want {
			t.Errorf("%s = %v, want %v", name, p, want)
		}
	}
	check("conns", f.Conns, 7)
	check("subs", f.Subs, 3)
	check("req/s", f.ReqPS, 5)
	check("dns q/s", f.DNSQPS, 10)
	check("cache hit", f.CacheHit, 0.5)
	check("cache bytes", f.CacheBytes, 4096)
	if f.Lag["node2"] != 0.5 || f.Lag["node3"] != 0 || len(f.Lag) != 2 || f.LagOps["node2"] != 12 {
		t.Errorf("lag %v %v", f.Lag, f.LagOps)
	}
	// Old samples fall out of the windows.
	for i := 2; i < 100; i++ {
		fams, _ = reg.Gather()
		h.add(takeSample(fams, t0.Add(time.Duration(i)*10*time.Second), parts))
	}
	if len(h.s) > 8 {
		t.Errorf("history keeps %d samples", len(h.s))
	}
	f = h.figures()
	check("req/s idle", f.ReqPS, 0)
	if f.CacheHit != nil {
		t.Errorf("cache hit without requests in the window: %v", *f.CacheHit)
	}

	// A registry without the parts: no figures, not zeros.
	var empty history
	empty.add(takeSample(nil, t0, nil))
	b, _ := json.Marshal(empty.figures())
	if string(b) != `{"at":1000000}` {
		t.Errorf("no parts: %s", b)
	}
}

func newTestStatus(t *testing.T, pub *nodemap.Publisher, interval time.Duration) (*Status, *httptest.Server) {
	t.Helper()
	reg := prometheus.NewRegistry()
	newPartMetrics(reg)
	st, err := NewStatus(StatusOptions{NodeID: "node1", Version: "v-test", Nodes: pub, Gatherer: reg, Interval: interval}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for p, h := range st.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := st.Stop(ctx); err != nil {
			t.Error(err)
		}
		srv.Close()
	})
	return st, srv
}

func TestStatusPage(t *testing.T) {
	pub := nodemap.NewPublisher(testNodes())
	_, srv := newTestStatus(t, pub, time.Hour)
	resp, err := http.Get(srv.URL + "/status")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	page := string(body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Error("no CSP")
	}
	for _, want := range []string{`class="land" d="M`, `"id":"node2"`, `"state":"alive"`, "seen from <code>node1</code>", "new EventSource(\"/status/events\")"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Nothing from elsewhere: no absolute URLs in src/href.
	for _, bad := range []string{"http://", "https://", "src=\"//"} {
		if strings.Contains(page, bad) {
			t.Errorf("page refers to %q", bad)
		}
	}
	t.Logf("status page: %d bytes", len(body))
	if len(body) > 100<<10 {
		t.Errorf("page is %d bytes", len(body))
	}
}

// readEvents returns the data of each SSE event from r.
func readEvents(t *testing.T, body io.Reader) <-chan snapshot {
	ch := make(chan snapshot, 16)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				var s snapshot
				if err := json.Unmarshal([]byte(data), &s); err != nil {
					t.Errorf("event: %v: %s", err, data)
					return
				}
				ch <- s
			}
		}
	}()
	return ch
}

func stateOf(s snapshot, id string) string {
	for _, m := range s.Members {
		if m.ID == id {
			return m.State
		}
	}
	return ""
}

func TestStatusEventsFollowTheMap(t *testing.T) {
	pub := nodemap.NewPublisher(testNodes())
	// An hour-long interval: every event after the first is a map change.
	st, srv := newTestStatus(t, pub, time.Hour)
	resp, err := http.Get(srv.URL + "/status/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	events := readEvents(t, resp.Body)
	next := func() snapshot {
		t.Helper()
		select {
		case s, ok := <-events:
			if !ok {
				t.Fatal("stream ended")
			}
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("no event")
		}
		return snapshot{}
	}
	s := next()
	if s.Node != "node1" || len(s.Members) != 3 || stateOf(s, "node2") != "alive" {
		t.Fatalf("first event %+v", s)
	}
	nodes := testNodes()
	nodes[1].State = nodemap.Dead
	pub.Publish(nodes)
	for stateOf(s, "node2") != "dead" {
		s = next()
	}
	if s.Members[0].Figures == nil || s.Members[0].Figures.Conns == nil {
		t.Errorf("self without figures: %+v", s.Members[0])
	}
	// Readiness shows, with the reason, as soon as the map says so.
	nodes[2].Ready, nodes[2].NotReady = false, "mongo replication: initial_sync"
	pub.Publish(nodes)
	notReady := func(s snapshot) string {
		for _, m := range s.Members {
			if m.ID == "node3" && !m.Ready {
				return m.NotReady
			}
		}
		return ""
	}
	for notReady(s) == "" {
		s = next()
	}
	if got := notReady(s); got != "mongo replication: initial_sync" {
		t.Errorf("node3 not ready: %q", got)
	}

	// Stop ends the stream (the node's admin listener can then shut down).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := st.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for range events {
	}
	resp2, err := http.Get(srv.URL + "/status/events")
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("after stop: %d", resp2.StatusCode)
	}
}

func TestStatusViewerLimit(t *testing.T) {
	pub := nodemap.NewPublisher(testNodes())
	reg := prometheus.NewRegistry()
	st, err := NewStatus(StatusOptions{NodeID: "node1", Nodes: pub, Gatherer: reg, MaxViewers: 1}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	for p, h := range st.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	defer st.Stop(context.Background())
	a, err := http.Get(srv.URL + "/status/events")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Body.Close()
	b, err := http.Get(srv.URL + "/status/events")
	if err != nil {
		t.Fatal(err)
	}
	b.Body.Close()
	if a.StatusCode != 200 || b.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("first %d, second %d", a.StatusCode, b.StatusCode)
	}
}

func TestPeerFiguresChecked(t *testing.T) {
	pub := nodemap.NewPublisher(testNodes())
	reg := prometheus.NewRegistry()
	st, err := NewStatus(StatusOptions{NodeID: "node1", Nodes: pub, Gatherer: reg}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	st.onPeer("node2", []byte(`{"at":1,"conns":3,"lag":{"node1":0.1}}`))
	st.onPeer("node3", []byte(`{"conns":-1}`))
	st.onPeer("node1", []byte(`{"conns":1}`)) // itself: never from a peer
	st.onPeer("node3", []byte(`{"cache_hit":2}`))
	st.publish(time.Now())
	var s snapshot
	if err := json.Unmarshal(st.current().json, &s); err != nil {
		t.Fatal(err)
	}
	for _, m := range s.Members {
		switch m.ID {
		case "node2":
			if m.Figures == nil || *m.Figures.Conns != 3 || m.Figures.Lag["node1"] != 0.1 {
				t.Errorf("node2 %+v", m.Figures)
			}
		case "node3":
			if m.Figures != nil {
				t.Errorf("node3 kept bad figures %+v", m.Figures)
			}
		}
	}
	// A node that left the map loses its figures.
	pub.Publish(testNodes()[:1])
	st.publish(time.Now())
	st.mu.Lock()
	n := len(st.peers)
	st.mu.Unlock()
	if n != 0 {
		t.Errorf("%d peers' figures kept after they left", n)
	}
}

func FuzzDecodeFigures(f *testing.F) {
	f.Add([]byte(`{"at":1700000000000,"conns":3,"subs":1,"req_ps":2.5,"dns_qps":0,"cache_hit":0.9,"cache_bytes":1024,"lag":{"node2":0.01}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"lag":{"":1}}`))
	f.Add([]byte(`{"conns":1e400}`))
	f.Add([]byte(`{"lag_ops":{"node2":-1}}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fig, err := decodeFigures(b)
		if err != nil {
			return
		}
		// Whatever is accepted can be re-encoded for the page.
		if _, err := json.Marshal(fig); err != nil {
			t.Fatalf("accepted figures do not encode: %v", err)
		}
	})
}
