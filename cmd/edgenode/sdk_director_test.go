package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// director stands where DNS stands in production between a page and the
// nodes: every new connection goes to the first node of its list that
// accepts one, so when a node dies the clients' next connections land on
// another, as DNS stops naming a dead node. It is an HTTP reverse proxy
// (websockets relayed), so it can also play the proxy of a network that
// refuses websocket upgrades (blockWS). It serves the tests' page itself.
// Two listeners: HTTPS for the browser, plain HTTP for the JavaScript
// clients of the spread test (the nodes behind it speak TLS either way).
type director struct {
	nodes   []string // HTTPS addresses, in order of preference
	page    atomic.Pointer[string]
	blockWS atomic.Bool
	hold    atomic.Bool // no node reachable: every request is refused
	refused atomic.Int64
	https   *httptest.Server
	plain   *httptest.Server
}

func newDirector(t *testing.T, nodes []string) *director {
	t.Helper()
	d := &director{nodes: nodes}
	tr := &http.Transport{
		DialContext: d.dial,
		// Loopback nodes with the test cluster's certificates.
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: true, // a new connection, a fresh choice of node
	}
	t.Cleanup(tr.CloseIdleConnections)
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(&url.URL{Scheme: "https", Host: "edge"})
			r.Out.Host = r.In.Host
		},
		Transport: tr,
		ErrorLog:  nil,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, "director: "+err.Error(), http.StatusBadGateway)
		},
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/page.html" {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			_, _ = w.Write([]byte(*d.page.Load()))
			return
		}
		if d.hold.Load() {
			http.Error(w, "director: holding", http.StatusBadGateway)
			return
		}
		if d.blockWS.Load() && strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			d.refused.Add(1)
			http.Error(w, "websockets are not allowed on this network", http.StatusForbidden)
			return
		}
		proxy.ServeHTTP(w, r)
	})
	empty := ""
	d.page.Store(&empty)
	d.https = httptest.NewUnstartedServer(h)
	d.https.StartTLS() // HTTP/1.1: websocket upgrades
	d.plain = httptest.NewServer(h)
	t.Cleanup(func() {
		d.https.CloseClientConnections()
		d.plain.CloseClientConnections()
		d.https.Close()
		d.plain.Close()
	})
	return d
}

// dial connects to the first node that accepts a connection.
func (d *director) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var last error
	for _, addr := range d.nodes {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			return c, nil
		}
		last = err
	}
	return nil, last
}

// pin is the director's certificate pin for Chromium.
func (d *director) pin() string {
	sum := sha256.Sum256(d.https.Certificate().RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// presenceAt is the node's local subscriber count of channel (-1 when the
// node does not answer).
func presenceAt(t testing.TB, p *nodeProc, token, channel string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+p.admin+"/v1/presence/"+channel, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var r struct{ Local int }
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&r) != nil {
		return -1
	}
	return r.Local
}
