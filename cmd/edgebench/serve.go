package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/admin"
	"github.com/edgenode/edgenode/internal/pubsub"
	"github.com/edgenode/edgenode/internal/transport"
)

// serveCmd runs pubsub behind the real transport and admin listener, the
// way the node mounts it, with one public tenant "demo".
func serveCmd(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "public TLS address")
	adminAddr := fs.String("admin", "127.0.0.1:0", "admin address")
	dir := fs.String("dir", os.TempDir(), "folder for the self-signed certificate")
	plain := fs.Bool("plain-tls", false, "serve with a bare net/http TLS server instead of internal/transport")
	noPoller := fs.Bool("no-poller", false, "one reader goroutine per websocket instead of the epoll poller")
	_ = fs.Parse(args)

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	certFile, keyFile, err := transport.EnsureSelfSigned(*dir, nil, log)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	ps, err := pubsub.New(pubsub.Options{
		Tenants:       []pubsub.Tenant{{Name: "demo", Public: []string{"*"}}},
		DisablePoller: *noPoller,
	}, nil, log, reg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	aln, err := net.Listen("tcp", *adminAddr)
	if err != nil {
		return err
	}
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	adm, err := admin.New(aln, reg, token, log)
	if err != nil {
		return err
	}
	for pat, h := range ps.AdminRoutes() {
		adm.Handle(pat, h)
	}
	adm.SetReady(true)
	go func() { _ = adm.Serve() }()

	var serve func() error
	var shutdown func(context.Context) error
	if *plain {
		mux := http.NewServeMux()
		for pat, h := range ps.Routes() {
			mux.Handle(pat, h)
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return err
		}
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}}
		serve = func() error { return srv.ServeTLS(ln, "", "") }
		shutdown = srv.Shutdown
	} else {
		srv, err := transport.NewFromFiles(ln, certFile, keyFile, log, reg)
		if err != nil {
			return err
		}
		for pat, h := range ps.Routes() {
			srv.Handle(pat, h)
		}
		serve = srv.Serve
		shutdown = srv.Shutdown
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Printf("wss://%s/ws http://%s %s\n", ln.Addr(), aln.Addr(), token)
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = ps.Drain(dctx)
	_ = shutdown(dctx)
	_ = adm.Shutdown(dctx)
	_ = ps.Close()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
