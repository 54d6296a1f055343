// Command transportbench measures the TLS transport against a bare net/http
// TLS server, for `make bench`. It is not part of the product.
//
//	transportbench serve -mode edgenode|bare -listen ADDR -dir DIR   serve GET /10k (10 KiB) until killed
//	transportbench handshakes -addr ADDR -c 32 -d 10s                full TLS handshakes per second
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/transport"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: transportbench serve|handshakes ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "handshakes":
		err = handshakes(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "transportbench:", err)
		os.Exit(1)
	}
}

var body = bytes.Repeat([]byte("0123456789abcdef"), 640) // 10 KiB

func tenK(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(body)
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	mode := fs.String("mode", "edgenode", "edgenode (the real transport) or bare (net/http)")
	listen := fs.String("listen", "127.0.0.1:0", "address")
	dir := fs.String("dir", os.TempDir(), "folder for the self-signed certificate")
	_ = fs.Parse(args)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	certFile, keyFile, err := transport.EnsureSelfSigned(*dir, nil, log)
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
	switch *mode {
	case "bare":
		srv := &http.Server{Handler: http.HandlerFunc(tenK), ReadHeaderTimeout: 10 * time.Second}
		go func() { <-ctx.Done(); srv.Close() }()
		err := srv.ServeTLS(ln, certFile, keyFile)
		if err == http.ErrServerClosed {
			return nil
		}
		return err
	case "edgenode":
		srv, err := transport.NewFromFiles(ln, certFile, keyFile, log, prometheus.NewRegistry())
		if err != nil {
			return err
		}
		srv.Handle("GET /10k", http.HandlerFunc(tenK))
		go func() { <-ctx.Done(); srv.Shutdown(context.Background()) }()
		return srv.Serve()
	}
	return fmt.Errorf("unknown mode %q", *mode)
}

func handshakes(args []string) error {
	fs := flag.NewFlagSet("handshakes", flag.ExitOnError)
	addr := fs.String("addr", "", "server address")
	conc := fs.Int("c", 32, "concurrent clients")
	dur := fs.Duration("d", 10*time.Second, "duration")
	_ = fs.Parse(args)
	// No session cache: every handshake is a full one.
	conf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
	var ok, fail atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	deadline := time.Now().Add(*dur)
	var wg sync.WaitGroup
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(deadline) {
				t0 := time.Now()
				c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", *addr, conf)
				if err != nil {
					fail.Add(1)
					continue
				}
				mine = append(mine, time.Since(t0))
				c.Close()
				ok.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p99 := time.Duration(0)
	if len(lat) > 0 {
		p99 = lat[len(lat)*99/100]
	}
	fmt.Printf("%.0f %s %d\n", float64(ok.Load())/dur.Seconds(), p99.Round(10*time.Microsecond), fail.Load())
	return nil
}
