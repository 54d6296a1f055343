package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/edgenode/edgenode/internal/testkit"
)

// slowRelay forwards TCP connections from a loopback port to target,
// holding every chunk for delay in each direction: a slow path on the
// wire. It stands in for tc netem, which this kernel lacks (no
// sch_netem); with netem the same test would delay the node's interface.
func slowRelay(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				time.Sleep(delay)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Add(2)
			go pipe(u, c)
			go pipe(c, u)
		}
	})
	return ln.Addr().String()
}

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

// dnsOrder asks node i's DNS for the widget name and returns the
// addresses in answer order.
func dnsOrder(c *cluster, i int) []string {
	q := new(mdns.Msg)
	q.SetQuestion("widget.edgenode.test.", mdns.TypeA)
	r, _, err := (&mdns.Client{Timeout: 2 * time.Second}).Exchange(q, c.nodes[i].dns)
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

// TestMeasuredDNS: three real nodes. For a client on 127.0.0.0/24, node1
// is the nearest on the map (its own region), but the path to it is slow.
// The test measures both nodes as the widget does and posts the beacons
// as a browser would; node1's DNS then answers with node2 first, node3
// follows once node1's digest has reached it over the mesh, and node1's
// status page shows the measured preference and the coordinates' RTTs.
func TestMeasuredDNS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three nodes")
	}
	c := newCluster(t, 3, "mongo: {enabled: false}\ndns: {measured: {min_samples: 5}}\n")
	c.startAll()
	testkit.WaitFor(t, 60*time.Second, "3 alive members", func() bool {
		st := c.states(0)
		return st["node1"] == "alive" && st["node2"] == "alive" && st["node3"] == "alive"
	})
	testkit.WaitFor(t, 30*time.Second, "node1's own address first before measuring", func() bool {
		o := dnsOrder(c, 0)
		return len(o) == 3 && o[0] == "127.0.0.1"
	})

	slow := slowRelay(t, c.nodes[0].https, 30*time.Millisecond)
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // the nodes' self-signed certificates
	}}
	defer hc.CloseIdleConnections()
	post := func(body []byte) {
		resp, err := hc.Post("https://"+c.nodes[0].https+"/.well-known/edgenode/beacon", "text/plain", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("beacon: %d", resp.StatusCode)
		}
	}
	for range 6 {
		b, _ := json.Marshal(map[string]float64{"node1": timeRTT(t, hc, slow), "node2": timeRTT(t, hc, c.nodes[1].https)})
		t.Logf("beacon %s", b)
		post(b)
	}
	// Input limits, end to end: refused with a clear error, nothing kept.
	resp, err := hc.Post("https://"+c.nodes[0].https+"/.well-known/edgenode/beacon", "text/plain",
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
		o := dnsOrder(c, 0)
		return len(o) == 3 && o[0] == "127.0.0.2"
	})
	testkit.WaitFor(t, 90*time.Second, "node3's DNS to lead with node2 from node1's digest", func() bool {
		o := dnsOrder(c, 2)
		return len(o) == 3 && o[0] == "127.0.0.2"
	})
	testkit.WaitFor(t, 30*time.Second, "status page with the measured preference and estimated RTTs", func() bool {
		r, err := http.Get("http://" + c.nodes[0].admin + "/status")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		s := string(b)
		return strings.Contains(s, `"network":"127.0.0.0/24","nodes":[{"id":"node2"`) && strings.Contains(s, `"rtt_ms":`)
	})
}
