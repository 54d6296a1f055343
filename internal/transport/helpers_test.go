package transport_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go/http3"

	"github.com/edgenode/edgenode/internal/transport"
)

// testServer is a real transport.Server on 127.0.0.1: TCP and, unless
// disabled, UDP on the same port number.
type testServer struct {
	srv    *transport.Server
	addr   string // host:port, the same for TCP and UDP
	served chan error
}

func quietLog() *slog.Logger {
	if os.Getenv("TRANSPORT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// listenPair binds TCP and UDP on the same free port of 127.0.0.1.
func listenPair(t testing.TB) (net.Listener, net.PacketConn) {
	t.Helper()
	for range 50 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			return ln, pc
		}
		ln.Close()
	}
	t.Fatal("no port free for both TCP and UDP")
	return nil, nil
}

func selfSignedStore(t testing.TB) *transport.CertStore {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, err := transport.EnsureSelfSigned(dir, []string{"example.test"}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	certs, err := transport.NewCertStore([]transport.CertSource{{CertFile: certFile, KeyFile: keyFile}}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func defaultLimits() transport.Limits {
	return transport.Limits{MaxHeaderBytes: 8 << 10, MaxBodyBytes: 64 << 10, ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: time.Minute, MaxConnsPerIP: 0}
}

// startServer builds and serves a Server; routes registers routes before
// Serve. Cleanup shuts it down and checks Serve returned nil.
func startServer(t testing.TB, h3 bool, app http.Handler, modify func(*transport.Options), routes func(*transport.Server)) *testServer {
	t.Helper()
	ln, pc := listenPair(t)
	if !h3 {
		pc.Close()
		pc = nil
	}
	opts := transport.Options{Listener: ln, Certs: selfSignedStore(t), App: app, Limits: defaultLimits()}
	if pc != nil {
		opts.UDPConn = pc
	}
	if modify != nil {
		modify(&opts)
	}
	srv, err := transport.New(opts, quietLog(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if routes != nil {
		routes(srv)
	}
	ts := &testServer{srv: srv, addr: ln.Addr().String(), served: make(chan error, 1)}
	go func() { ts.served <- srv.Serve() }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

func (ts *testServer) stop(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = ts.srv.Shutdown(ctx)
	select {
	case err := <-ts.served:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		ts.served <- nil // later stops see it too
	case <-time.After(20 * time.Second):
		t.Error("Serve did not return after Shutdown")
	}
}

func insecureTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, ServerName: "example.test"}
}

// clients for the three protocols.
func h1Client() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS(), ForceAttemptHTTP2: false,
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
}

func h2Client() *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS(), ForceAttemptHTTP2: true}}
}

func h3Client() (*http.Client, *http3.Transport) {
	tr := &http3.Transport{TLSClientConfig: insecureTLS()}
	return &http.Client{Transport: tr}, tr
}

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return string(b)
}
