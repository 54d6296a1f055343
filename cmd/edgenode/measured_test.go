//go:build linux

package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/testkit"
)

// timeRTT does what rtt.js does: fetch the node's RTT path twice on one
// connection and time the second fetch.
func timeRTT(t *testing.T, c *http.Client, addr string) float64 {
	t.Helper()
	url := "https://" + addr + "/.well-known/edgenode/rtt"
	var ms float64
	for i := range 2 {
		start := time.Now()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Cache-Control") != "no-store" ||
			resp.Header.Get("Access-Control-Allow-Origin") != "*" || len(resp.Cookies()) > 0 {
			t.Fatalf("rtt on %s: %d %v", addr, resp.StatusCode, resp.Header)
		}
		if i == 1 {
			ms = float64(time.Since(start).Microseconds()) / 1000
		}
	}
	return ms
}

// TestMeasuredDNS: three real nodes on a delayed network, and the test
// as a client on it (10.76.S.200, its /24 the client network). For it
// node1 is the nearest on the map (node1's own region: the client's place
// is unknown), but the path to node1 is slow (30 ms each way on the
// emulated wire) and to node2 not. The test measures both nodes as the
// widget does and posts the beacons as a browser would; node1's DNS then
// answers with node2 first, node3 follows once node1's digest has reached
// it over the mesh, and node1's status page shows the measured preference
// and the coordinates' RTTs.
func TestMeasuredDNS(t *testing.T) {
	needNetns(t)
	dn := setupDelayNet(t, 3, true)
	// HTTPS and DNS on every address, so that the client reaches them
	// over the delayed network too (the harness's addresses stay those
	// of the management links).
	c := delayedCluster(t, dn, 3, "https: {listen: \"0.0.0.0:8443\"}\ndns: {listen: \"0.0.0.0:8053\", measured: {min_samples: 5}}\n")
	dn.startIn(c)
	testkit.WaitFor(t, 60*time.Second, "3 alive members", func() bool {
		st := c.states(0)
		return st["node1"] == "alive" && st["node2"] == "alive" && st["node3"] == "alive"
	})
	https := func(i int) string { return dn.meshIP(i) + ":8443" }
	dnsAt := func(i int) string { return dn.meshIP(i) + ":8053" }
	testkit.WaitFor(t, 30*time.Second, "node1's own address first before measuring", func() bool {
		o := widgetOrder(dnsAt(0))
		return len(o) == 3 && o[0] == dn.meshIP(0)
	})

	dn.link(dn.clientEnd(), 0, 30*time.Millisecond)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the nodes' self-signed certificates
	}}
	defer hc.CloseIdleConnections()
	post := func(body []byte) {
		resp, err := hc.Post("https://"+https(0)+"/.well-known/edgenode/beacon", "text/plain", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("beacon: %d", resp.StatusCode)
		}
	}
	for range 6 {
		b, _ := json.Marshal(map[string]float64{"node1": timeRTT(t, hc, https(0)), "node2": timeRTT(t, hc, https(1))})
		t.Logf("beacon %s", b)
		post(b)
	}
	// Input limits, end to end: refused with a clear error, nothing kept.
	resp, err := hc.Post("https://"+https(0)+"/.well-known/edgenode/beacon", "text/plain",
		strings.NewReader(`{"node1":1,"node2":1,"node3":1,"node4":1,"node5":1}`))
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "more than 4 entries") {
		t.Errorf("oversized beacon: %d %s", resp.StatusCode, msg)
	}

	testkit.WaitFor(t, 30*time.Second, "node1's DNS to lead with node2 once measured", func() bool {
		o := widgetOrder(dnsAt(0))
		return len(o) == 3 && o[0] == dn.meshIP(1)
	})
	testkit.WaitFor(t, 90*time.Second, "node3's DNS to lead with node2 from node1's digest", func() bool {
		o := widgetOrder(dnsAt(2))
		return len(o) == 3 && o[0] == dn.meshIP(1)
	})
	testkit.WaitFor(t, 30*time.Second, "status page with the measured preference and estimated RTTs", func() bool {
		st, err := statusPage(c.nodes[0])
		if err != nil || len(st.Measured) == 0 {
			return false
		}
		m := st.Measured[0]
		withRTT := 0
		for _, mb := range st.Members {
			if mb.RTTMS != nil {
				withRTT++
			}
		}
		return m.Network == dn.clientNet() && len(m.Nodes) > 0 && m.Nodes[0].ID == "node2" && withRTT == 2
	})
}

// TestMeasuredOff: three real nodes on loopback; node1 and node3 measure,
// node2 has dns.measured.enabled: false. node2 serves none of the widget's
// routes (404), shows no measured preference on its status page, and its
// DNS answers ignore the measurements that node1's digest carries over the
// mesh, while node3's answers follow them (the control: the digest is
// sent, and with measuring on it steers).
func TestMeasuredOff(t *testing.T) {
	c := newCluster(t, 3, "mongo: {enabled: false}\nlog: {level: info}\ndns: {measured: {min_samples: 5}}\n")
	c.cfgs[1] = mergeYAML(t, c.cfgs[1], "dns: {measured: {enabled: false}}\n")
	c.startAll()
	for i := range 3 {
		testkit.WaitFor(t, 60*time.Second, fmt.Sprintf("node%d to see 3 alive members", i+1), func() bool {
			st := c.states(i)
			return st["node1"] == "alive" && st["node2"] == "alive" && st["node3"] == "alive"
		})
	}
	// Before any measurement, each node's DNS leads with itself (the
	// client's place is unknown: the answering node's region).
	ip := func(i int) string { return fmt.Sprintf("127.0.0.%d", i+1) }
	for i := range 3 {
		testkit.WaitFor(t, 30*time.Second, fmt.Sprintf("node%d's DNS to lead with itself", i+1), func() bool {
			o := widgetOrder(c.nodes[i].dns)
			return len(o) == 3 && o[0] == ip(i)
		})
	}

	hc := httpsClient(true)
	defer hc.CloseIdleConnections()
	do := func(i int, method, path, body string) int {
		t.Helper()
		req, err := http.NewRequest(method, "https://"+c.nodes[i].https+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := do(0, http.MethodGet, "/.well-known/edgenode/rtt", ""); s != http.StatusNoContent {
		t.Fatalf("node1 (measuring) rtt: %d, want 204", s)
	}
	for _, r := range []struct{ method, path, body string }{
		{http.MethodGet, "/.well-known/edgenode/rtt", ""},
		{http.MethodGet, "/.well-known/edgenode/rtt.js", ""},
		{http.MethodGet, "/.well-known/edgenode/rtt-targets", ""},
		{http.MethodPost, "/.well-known/edgenode/beacon", `{"node1":5,"node2":40,"node3":40}`},
	} {
		if s := do(1, r.method, r.path, r.body); s != http.StatusNotFound {
			t.Errorf("node2 (not measuring) %s %s: %d, want 404", r.method, r.path, s)
		}
	}

	// The test's network (127.0.0.0/24) measures node1 fastest, at node1.
	for range 6 {
		if s := do(0, http.MethodPost, "/.well-known/edgenode/beacon", `{"node1":5,"node2":40,"node3":40}`); s != http.StatusNoContent {
			t.Fatalf("beacon to node1: %d", s)
		}
	}
	testkit.WaitFor(t, 90*time.Second, "node3's DNS to lead with node1 from node1's digest", func() bool {
		o := widgetOrder(c.nodes[2].dns)
		return len(o) == 3 && o[0] == ip(0)
	})
	// node2 got the same broadcast: it still leads with itself.
	for range 10 {
		if o := widgetOrder(c.nodes[1].dns); len(o) != 3 || o[0] != ip(1) {
			t.Fatalf("node2 (not measuring) answers %v, want itself first", o)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if v := metricSum(t, c.nodes[1].admin, "edgenode_dns_measured_answers_total"); v != 0 {
		t.Errorf("node2 (not measuring): %v measured answers", v)
	}
	if v := metricSum(t, c.nodes[2].admin, "edgenode_dns_measured_answers_total"); v == 0 {
		t.Errorf("node3 (measuring): no measured answers counted")
	}
	st, err := statusPage(c.nodes[1])
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Measured) != 0 {
		t.Errorf("node2 (not measuring) status page shows measured preferences %+v", st.Measured)
	}
}
