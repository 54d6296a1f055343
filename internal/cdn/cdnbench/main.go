// Command cdnbench serves the media cache for load tests (`make bench`); it
// is not part of the product.
//
//	cdnbench -origin DIR [-cache DIR] [-listen ADDR] [-mode edgenode|bare] [-certdir DIR]
//
// It prints the listening address on its first line and serves until
// SIGTERM. mode edgenode (default) serves the cache through the real TLS
// transport (HTTP/1.1 and HTTP/2, as the node does); mode bare serves the
// origin folder with http.FileServer on a plain net/http TLS server, the
// baseline the cache should beat. Both use the same self-signed certificate
// from -certdir, which nginx can be pointed at too.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // -pprof
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/cdn"
	"github.com/edgenode/edgenode/internal/transport"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cdnbench:", err)
		os.Exit(1)
	}
}

func run() error {
	origin := flag.String("origin", "", "origin folder (required)")
	cacheDir := flag.String("cache", "", "cache folder (default: a temporary one)")
	listen := flag.String("listen", "127.0.0.1:0", "address")
	mode := flag.String("mode", "edgenode", "edgenode (cache behind the transport) or bare (http.FileServer)")
	certDir := flag.String("certdir", os.TempDir(), "folder for the self-signed certificate")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile here until SIGTERM")
	pprofAddr := flag.String("pprof", "", "serve net/http/pprof on this address (heap and allocation profiles under load)")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	if *pprofAddr != "" {
		pl, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return err
		}
		// Only this tool's own diagnostics: the process ends at SIGTERM.
		go http.Serve(pl, nil) //nolint:errcheck
	}
	if *origin == "" {
		return fmt.Errorf("-origin is required")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	certFile, keyFile, err := transport.EnsureSelfSigned(*certDir, nil, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Println(ln.Addr().String())

	if *mode == "bare" {
		srv := &http.Server{Handler: http.StripPrefix("/media/", http.FileServer(http.Dir(*origin))), ReadHeaderTimeout: 10 * time.Second}
		go func() { <-ctx.Done(); srv.Close() }()
		if err := srv.ServeTLS(ln, certFile, keyFile); err != http.ErrServerClosed {
			return err
		}
		return nil
	}

	if *cacheDir == "" {
		d, err := os.MkdirTemp("", "cdnbench-cache-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*cacheDir = d
	}
	o, err := cdn.NewDirOrigin(*origin)
	if err != nil {
		return err
	}
	defer o.Close()
	reg := prometheus.NewRegistry()
	c, err := cdn.New(cdn.Options{Dir: *cacheDir, Origin: o, TTL: time.Hour}, log, reg)
	if err != nil {
		return err
	}
	defer c.Close()
	srv, err := transport.NewFromFiles(ln, certFile, keyFile, log, reg)
	if err != nil {
		return err
	}
	for p, h := range c.Routes() {
		srv.Handle(p, h)
	}
	go func() { <-ctx.Done(); srv.Shutdown(context.Background()) }()
	return srv.Serve()
}
