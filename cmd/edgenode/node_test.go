package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/edgenode/edgenode/internal/testkit"
)

// testApp is the application server behind the node in these tests.
func testApp(t *testing.T) (*httptest.Server, *atomic.Int32) {
	var slowStarted atomic.Int32
	up := websocket.Upgrader{}
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from app; xff=%s proto=%s host=%s", r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Host)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		slowStarted.Add(1)
		time.Sleep(2 * time.Second)
		fmt.Fprint(w, "slow done")
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			// The next event waits until the client has seen this one:
			// the test fails (by timeout) unless each event is flushed
			// through the proxy on its own.
			time.Sleep(300 * time.Millisecond)
		}
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "got %d", n)
	})
	mux.HandleFunc("/echo-ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			typ, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(typ, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, &slowStarted
}

func TestEmbeddedNodeServesLandingPageOverH1AndH2(t *testing.T) {
	cfg, p := nodeConfig(t, "")
	startNode(t, cfg, p)
	for _, h2 := range []bool{false, true} {
		resp, body := get(t, httpsClient(h2), "https://"+p.https+"/")
		wantProto := map[bool]int{false: 1, true: 2}[h2]
		if resp.ProtoMajor != wantProto {
			t.Errorf("h2=%v: negotiated %s", h2, resp.Proto)
		}
		if resp.StatusCode != 200 || !strings.Contains(body, "test-node") || !strings.Contains(body, "<td>https</td>") {
			t.Errorf("h2=%v: landing page: %d %q", h2, resp.StatusCode, body)
		}
	}
	resp, body := get(t, http.DefaultClient, "http://"+p.admin+"/healthz")
	if resp.StatusCode != 200 || body != "ok\n" {
		t.Errorf("healthz: %d %q", resp.StatusCode, body)
	}
	_, metrics := get(t, http.DefaultClient, "http://"+p.admin+"/metrics")
	for _, want := range []string{
		`edgenode_http_requests_total{code="200",method="GET",proto="1.1",route="app"} 1`,
		`edgenode_http_requests_total{code="200",method="GET",proto="2",route="app"} 1`,
		`edgenode_tls_handshakes_total{result="ok",version="TLS 1.3"}`,
		"edgenode_http_connections_open",
		"go_goroutines", "process_resident_memory_bytes",
		`edgenode_http_request_duration_seconds_bucket{route="app"`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// The self-signed certificate is made once and kept.
	crt := filepath.Join(p.dataDir, "tls", "selfsigned.crt")
	before, err := os.ReadFile(crt)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.out.String(), "created self-signed certificate") || !strings.Contains(p.out.String(), "sha256=") {
		t.Error("fingerprint not logged")
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	p2 := *p
	startNode(t, cfg, &p2)
	after, _ := os.ReadFile(crt)
	if string(before) != string(after) {
		t.Error("self-signed certificate replaced on restart")
	}
}

func TestReverseProxyToAppServer(t *testing.T) {
	app, _ := testApp(t)
	cfg, p := nodeConfig(t, "https:\n  app_server: "+app.URL+"\n")
	startNode(t, cfg, p)

	for _, h2 := range []bool{false, true} {
		resp, body := get(t, httpsClient(h2), "https://"+p.https+"/hello")
		if resp.StatusCode != 200 || !strings.Contains(body, "xff=127.0.0.1") || !strings.Contains(body, "proto=https") ||
			!strings.Contains(body, "host="+p.https) {
			t.Errorf("h2=%v: %d %q", h2, resp.StatusCode, body)
		}
	}

	// A streamed response arrives event by event.
	resp, err := httpsClient(true).Get("https://" + p.https + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() { line, _ := br.ReadString('\n'); first <- line }()
	select {
	case line := <-first:
		if line != "data: 0\n" {
			t.Errorf("first event %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first event of a stream not flushed through the proxy")
	}
	rest, _ := io.ReadAll(br)
	resp.Body.Close()
	if !strings.Contains(string(rest), "data: 2") {
		t.Errorf("rest of stream: %q", rest)
	}

	// Websocket echo through the node.
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	ws, _, err := d.Dial("wss://"+p.https+"/echo-ws", nil)
	if err != nil {
		t.Fatalf("websocket dial: %v", err)
	}
	defer ws.Close()
	for _, msg := range []string{"one", "two"} {
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.ReadMessage()
		if err != nil || string(got) != "echo: "+msg {
			t.Fatalf("echo: %q %v", got, err)
		}
	}

	// Body within the limit passes; a dead app server is a 502, not a hang.
	resp2, err := httpsClient(false).Post("https://"+p.https+"/upload", "application/octet-stream", strings.NewReader(strings.Repeat("x", 1000)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	if string(b) != "got 1000" {
		t.Errorf("upload: %q", b)
	}
	app.Close()
	resp3, _ := get(t, httpsClient(false), "https://"+p.https+"/hello")
	if resp3.StatusCode != http.StatusBadGateway {
		t.Errorf("dead app server: %d", resp3.StatusCode)
	}
}

func TestCertificateReload(t *testing.T) {
	dir := t.TempDir()
	ecCert, ecKey := filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key")
	rsaCert, rsaKey := filepath.Join(dir, "b.crt"), filepath.Join(dir, "b.key")
	writeCert(t, ecCert, ecKey, "alpha-1", false, "alpha.test")
	writeCert(t, rsaCert, rsaKey, "beta-1", true, "beta.test")
	cfg, p := nodeConfig(t, fmt.Sprintf(`https:
  cert_check_interval: 200ms
  certificates:
    - cert_file: %s
      key_file: %s
    - cert_file: %s
      key_file: %s
`, ecCert, ecKey, rsaCert, rsaKey))
	startNode(t, cfg, p)

	// Chosen by SNI; without SNI, the first.
	if cn := peerCN(t, p.https, "alpha.test"); cn != "alpha-1" {
		t.Errorf("alpha.test got %s", cn)
	}
	if cn := peerCN(t, p.https, "beta.test"); cn != "beta-1" {
		t.Errorf("beta.test got %s", cn)
	}
	if cn := peerCN(t, p.https, ""); cn != "alpha-1" {
		t.Errorf("no SNI got %s", cn)
	}

	// An open HTTP/2 connection survives the reload.
	client := httpsClient(true)
	var conns atomic.Int32
	client.Transport.(*http.Transport).DialTLSContext = nil
	client.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conns.Add(1)
		return net.Dial(network, addr)
	}
	get(t, client, "https://"+p.https+"/")

	writeCert(t, ecCert, ecKey, "alpha-2", false, "alpha.test")
	testkit.WaitFor(t, 10*time.Second, "file change picked up", func() bool { return peerCN(t, p.https, "alpha.test") == "alpha-2" })
	resp, _ := get(t, client, "https://"+p.https+"/")
	if resp.StatusCode != 200 || conns.Load() != 1 {
		t.Errorf("open connection after reload: status %d, %d dials", resp.StatusCode, conns.Load())
	}

	// A broken file keeps the old certificate in use.
	if err := os.WriteFile(ecCert, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 10*time.Second, "broken file noticed", func() bool { return strings.Contains(p.out.String(), "keeping the old ones") })
	if cn := peerCN(t, p.https, "alpha.test"); cn != "alpha-2" {
		t.Errorf("after broken file: %s", cn)
	}
}

func TestCertificateReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key")
	writeCert(t, crt, key, "one", false, "alpha.test")
	certs := fmt.Sprintf("  certificates:\n    - cert_file: %s\n      key_file: %s\n", crt, key)
	cfg, p := nodeConfig(t, "https:\n  cert_check_interval: 0s\n"+certs)
	startNode(t, cfg, p)
	// A second node on the same files watches them: once it serves the new
	// certificate, the change was there to be seen.
	wcfg, watcher := nodeConfig(t, "https:\n  cert_check_interval: 200ms\n"+certs)
	startNode(t, wcfg, watcher)
	writeCert(t, crt, key, "two", false, "alpha.test")
	testkit.WaitFor(t, 10*time.Second, "the watching node to reload", func() bool { return peerCN(t, watcher.https, "alpha.test") == "two" })
	if cn := peerCN(t, p.https, "alpha.test"); cn != "one" {
		t.Fatalf("reloaded without SIGHUP while watching is off: %s", cn)
	}
	p.signal(syscall.SIGHUP)
	testkit.WaitFor(t, 10*time.Second, "SIGHUP reload", func() bool { return peerCN(t, p.https, "alpha.test") == "two" })
}

func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	app, slowStarted := testApp(t)
	cfg, p := nodeConfig(t, "https:\n  app_server: "+app.URL+"\n")
	startNode(t, cfg, p)

	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	ws, _, err := d.Dial("wss://"+p.https+"/echo-ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()

	type result struct {
		status int
		body   string
		err    error
	}
	res := make(chan result, 1)
	go func() {
		resp, err := httpsClient(true).Get("https://" + p.https + "/slow")
		if err != nil {
			res <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		res <- result{resp.StatusCode, string(b), err}
	}()
	sub := subscribeWS(t, p, "demo/thread-1")
	testkit.WaitFor(t, 10*time.Second, "slow request reached the app", func() bool { return slowStarted.Load() == 1 })
	p.signal(syscall.SIGTERM)

	// While the slow request is in flight, /readyz says no.
	testkit.WaitFor(t, 2*time.Second, "readyz false", func() bool {
		resp, err := http.Get("http://" + p.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	// The websocket is told to reconnect.
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = ws.ReadMessage()
	if !websocket.IsCloseError(err, websocket.CloseServiceRestart) {
		t.Errorf("websocket: want close 1012, got %v", err)
	}
	// So is the pubsub subscriber, with a frame first.
	sub.SetReadDeadline(time.Now().Add(10 * time.Second))
	var f frame
	if err := sub.ReadJSON(&f); err != nil || f.Type != "reconnect-elsewhere" {
		t.Errorf("pubsub: want reconnect-elsewhere, got %+v %v", f, err)
	}
	if _, _, err := sub.ReadMessage(); !websocket.IsCloseError(err, websocket.CloseServiceRestart) {
		t.Errorf("pubsub: want close 1012, got %v", err)
	}
	r := <-res
	if r.err != nil || r.status != 200 || r.body != "slow done" {
		t.Errorf("in-flight request: %d %q %v", r.status, r.body, r.err)
	}
	if code := p.wait(20 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
	// New connections are refused once draining started.
	if _, err := net.DialTimeout("tcp", p.https, time.Second); err == nil {
		t.Error("listener still accepting after exit")
	}
}

func TestBadConfigIsRefusedWithoutSideEffects(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	cases := []struct {
		name, extra string
		want        []string
	}{
		{"unknown key", "https:\n  listne: 127.0.0.1:1\n", []string{`https.listne (line`, `did you mean "listen"?`}},
		{"bad address", "admin:\n  listen: 127.0.0.1:http-ish\n", []string{`admin.listen: port "http-ish" is not a number`}},
		{"missing certificate", "https:\n  certificates:\n    - cert_file: /nonexistent/x.crt\n      key_file: /nonexistent/x.key\n",
			[]string{`https.certificates[0].cert_file: cannot read "/nonexistent/x.crt"`}},
		{"port in use", "admin:\n  listen: " + busy.Addr().String() + "\n", []string{"admin.listen: cannot listen", "address already in use"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, p := nodeConfig(t, tc.extra)
			path := filepath.Join(t.TempDir(), "bad.yaml")
			os.WriteFile(path, []byte(cfg), 0o600)
			out, err := exec.Command(binPath, "run", "--config", path).CombinedOutput()
			if err == nil {
				t.Fatalf("started with a bad config:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if _, err := os.Stat(p.dataDir); !os.IsNotExist(err) {
				t.Errorf("data folder touched: %v", err)
			}
			if tc.name != "port in use" {
				out, err = exec.Command(binPath, "check-config", path).CombinedOutput()
				if err == nil || !strings.Contains(string(out), tc.want[0]) {
					t.Errorf("check-config: %v\n%s", err, out)
				}
			}
		})
	}
	out, err := exec.Command(binPath, "check-config", "../../configs/edgenode.example.yaml").CombinedOutput()
	if err != nil {
		t.Errorf("example config: %v\n%s", err, out)
	}
	out, err = exec.Command(binPath, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "edgenode ") {
		t.Errorf("version: %v %q", err, out)
	}
}

func TestLimits(t *testing.T) {
	app, _ := testApp(t)
	cfg, p := nodeConfig(t, "https:\n  app_server: "+app.URL+`
  limits:
    max_header_bytes: 4KiB
    max_body_bytes: 1KiB
    read_header_timeout: 1s
    max_conns_per_ip: 4
`)
	startNode(t, cfg, p)
	var clients []*http.Client
	for _, h2 := range []bool{false, true} {
		cl := httpsClient(h2)
		clients = append(clients, cl)
		req, _ := http.NewRequest("GET", "https://"+p.https+"/hello", nil)
		req.Header.Set("X-Big", strings.Repeat("a", 6000))
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("h2=%v: oversized header: %d", h2, resp.StatusCode)
		}
		// Body over the limit, with and without a declared length.
		resp, err = cl.Post("https://"+p.https+"/upload", "x", strings.NewReader(strings.Repeat("x", 5000)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("h2=%v: oversized body: %d", h2, resp.StatusCode)
		}
		resp, err = cl.Post("https://"+p.https+"/upload", "x", io.MultiReader(strings.NewReader(strings.Repeat("x", 5000))))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestEntityTooLarge {
				t.Errorf("h2=%v: oversized chunked body: %d %q", h2, resp.StatusCode, b)
			}
		}
	}

	// Slowloris: a client that sends half a request head is cut off.
	conn, err := tls.Dial("tcp", p.https, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err = conn.Read(make([]byte, 100))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("slow client not cut off")
	}
	conn.Close()
	// A client that never finishes the TLS handshake is cut off too.
	raw, err := net.Dial("tcp", p.https)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetReadDeadline(time.Now().Add(15 * time.Second))
	_, err = raw.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("silent client not cut off")
	}
	raw.Close()

	// A connection beyond the per-address limit is refused before its TLS
	// handshake (the server spends nothing on it). The clients above keep
	// idle connections (HTTP/2 ones survive a 413): close them and wait
	// until the node has let go of every connection.
	for _, cl := range clients {
		cl.CloseIdleConnections()
	}
	testkit.WaitFor(t, 10*time.Second, "no connection open on the node", func() bool {
		_, m := get(t, http.DefaultClient, "http://"+p.admin+"/metrics")
		return strings.Contains(m, "\nedgenode_http_connections_open 0\n")
	})
	var held []*tls.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range 4 {
		c, err := tls.Dial("tcp", p.https, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	if c, err := tls.Dial("tcp", p.https, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}); err == nil {
		c.Close()
		t.Error("5th connection: TLS handshake completed, want it refused before")
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	testkit.WaitFor(t, 5*time.Second, "connections released", func() bool {
		resp, err := httpsClient(false).Get("https://" + p.https + "/hello")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	_, metrics := get(t, http.DefaultClient, "http://"+p.admin+"/metrics")
	for _, l := range []string{"header_size", "body_size", "conns_per_ip", "read_header_timeout"} {
		if strings.Contains(metrics, `edgenode_http_limit_hits_total{limit="`+l+`"} 0`) {
			t.Errorf("limit %s hit but not counted", l)
		}
	}
}
