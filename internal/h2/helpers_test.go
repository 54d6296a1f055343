package h2_test

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/edgenode/edgenode/internal/h2"
	"github.com/edgenode/edgenode/internal/transport"
)

// testCert is the transport's self-signed certificate (127.0.0.1 among
// its names), made in a temporary folder.
func testCert(t testing.TB) tls.Certificate {
	t.Helper()
	certFile, keyFile, err := transport.EnsureSelfSigned(t.TempDir(), []string{"example.test"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// testServer serves opts on a real TLS listener on 127.0.0.1, the way the
// transport does: its own accept loop and handshake, then ServeConn.
type testServer struct {
	addr  string
	srv   *h2.Server
	ln    net.Listener
	conns sync.WaitGroup
}

func serve(t testing.TB, opts h2.Options) *testServer {
	t.Helper()
	cert := testCert(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{addr: ln.Addr().String(), srv: h2.New(opts), ln: ln}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}
	ts.conns.Add(1)
	go func() {
		defer ts.conns.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ts.conns.Add(1)
			go func() {
				defer ts.conns.Done()
				tc := tls.Server(c, conf)
				if err := tc.Handshake(); err != nil {
					c.Close()
					return
				}
				st := tc.ConnectionState()
				ts.srv.ServeConn(tc, &st)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		ts.srv.Close()
		ts.conns.Wait()
	})
	return ts
}

// client is an HTTP/2-only client that trusts any certificate.
func client() *http.Client {
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP2(true)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}
