// Package node builds every part of an edgenode process from the config,
// starts them in order, reloads them on SIGHUP, and on SIGTERM drains and
// stops them in reverse order.
//
// Start-up is careful about side effects: every listening address is bound
// (or probed) before anything is written to the data folder, so a config
// that cannot run leaves no trace.
package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/edgenode/edgenode/internal/admin"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/pubsub"
	"github.com/edgenode/edgenode/internal/transport"
	"github.com/edgenode/edgenode/internal/web"
)

// Node is one running edgenode process.
type Node struct {
	cfg     config.Config
	log     *slog.Logger
	version string
	reg     *prometheus.Registry

	httpsLn  net.Listener
	httpsUDP net.PacketConn // HTTP/3; nil when https.http3 is off
	adminLn  net.Listener

	https    *transport.Server
	certs    *transport.CertStore
	fleetTLS *fleetTLS
	admin    *admin.Server

	mesh   *mesh.Mesh     // nil without a mesh
	nodes  nodemap.Source // the node map: the mesh's, or a static one
	pubsub *pubsub.PubSub // nil when pubsub is off
	// mongoProxy is set by the mongo part's start (parts start one after
	// the other, so later parts read it without a lock); nil before.
	mongoProxy *mongoproxy.Proxy
	cfgVersion string // a hash of the effective config, gossiped so rolling changes show

	parts []*part // in start order
}

// part is one piece of the node with its lifecycle. serve, when set, runs
// for the life of the part and returning early is a failure of the node.
type part struct {
	name   string
	detail string
	start  func(ctx context.Context) error
	serve  func() error
	// announce runs before any part drains: tell the world this node is
	// going (the mesh marks it draining so DNS stops handing it out).
	announce func(ctx context.Context) error
	drain    func(ctx context.Context) error // stop taking new work, finish in-flight work
	stop     func(ctx context.Context) error
	reload   func() error
}

// Errors a caller may want to tell apart.
var (
	ErrListen = errors.New("cannot listen")
)

// New checks that every address can be bound (keeping the public and admin
// listeners), then builds the parts. Nothing is written to the data folder
// before the addresses are known to be free.
func New(cfg config.Config, log *slog.Logger, version string) (_ *Node, err error) {
	n := &Node{cfg: cfg, log: log, version: version, reg: prometheus.NewRegistry(), cfgVersion: configVersion(&cfg)}
	defer func() {
		if err != nil {
			n.closeListeners()
		}
	}()
	if err := n.bind(); err != nil {
		return nil, err
	}
	for _, e := range exposureWarnings(&cfg) {
		log.Warn("listener reachable beyond this machine without authentication", "key", e.key, "addr", e.addr, "what", e.what)
	}
	if err := os.MkdirAll(cfg.Node.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("node.data_dir: create %s: %w", cfg.Node.DataDir, err)
	}
	n.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(version, cfg.Node.ID),
	)
	if err := n.buildHTTPS(); err != nil {
		return nil, err
	}
	if err := n.buildAdmin(); err != nil {
		return nil, err
	}
	if err := n.buildOptionalParts(); err != nil {
		return nil, err
	}
	n.addFleetTLSParts(n.fleetTLS)
	return n, nil
}

func buildInfo(version, id string) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "edgenode_build_info", Help: "Always 1; labels say what runs.",
		ConstLabels: prometheus.Labels{"version": version, "node": id},
	})
	g.Set(1)
	return g
}

// bind opens the TCP listeners for HTTPS and admin, and probes the addresses
// that parts bind themselves later, so a port in use is reported with its
// config key before anything else happens.
func (n *Node) bind() error {
	var err error
	if n.httpsLn, err = net.Listen("tcp", n.cfg.HTTPS.Listen); err != nil {
		return fmt.Errorf("https.listen: %w: %w", ErrListen, err)
	}
	if n.cfg.HTTPS.HTTP3 {
		// The same port number as TCP (which may have been chosen by the kernel).
		if n.httpsUDP, err = net.ListenPacket("udp", n.httpsLn.Addr().String()); err != nil {
			return fmt.Errorf("https.listen (udp, for http3): %w: %w", ErrListen, err)
		}
	}
	if n.adminLn, err = net.Listen("tcp", n.cfg.Admin.Listen); err != nil {
		return fmt.Errorf("admin.listen: %w: %w", ErrListen, err)
	}
	for _, p := range n.probes() {
		if err := probe(p.network, p.addr); err != nil {
			return fmt.Errorf("%s: %w: %w", p.key, ErrListen, err)
		}
	}
	return nil
}

type probeAddr struct{ key, network, addr string }

func probe(network, addr string) error {
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	default:
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		return l.Close()
	}
}

func (n *Node) closeListeners() {
	for _, l := range []net.Listener{n.httpsLn, n.adminLn} {
		if l != nil {
			l.Close()
		}
	}
	// Once transport.New succeeds the transport owns the UDP socket.
	if n.httpsUDP != nil && n.https == nil {
		n.httpsUDP.Close()
	}
}

func (n *Node) buildHTTPS() error {
	h := n.cfg.HTTPS
	var sources []transport.CertSource
	for _, c := range h.Certificates {
		src := transport.CertSource{CertFile: c.CertFile, KeyFile: c.KeyFile}
		if c.KeyFile == "" {
			key := c.Key
			src.KeyPEM = func() ([]byte, error) {
				v, err := key.Resolve()
				return []byte(v), err
			}
		}
		sources = append(sources, src)
	}
	if len(sources) == 0 {
		host, _, _ := net.SplitHostPort(h.Listen)
		cert, key, err := transport.EnsureSelfSigned(filepath.Join(n.cfg.Node.DataDir, "tls"), []string{host, n.cfg.Node.PublicIPv4, n.cfg.Node.PublicIPv6}, n.log)
		if err != nil {
			return fmt.Errorf("https: self-signed certificate: %w", err)
		}
		sources = append(sources, transport.CertSource{CertFile: cert, KeyFile: key})
	}
	certs, err := transport.NewCertStore(sources, n.log.With("part", "https"))
	if err != nil {
		return fmt.Errorf("https.certificates: %w", err)
	}
	n.certs = certs
	var app http.Handler
	var proxy *transport.AppProxy
	if h.AppServer != "" {
		u, err := url.Parse(h.AppServer)
		if err != nil {
			return fmt.Errorf("https.app_server: %w", err)
		}
		proxy = transport.NewAppProxy(u, n.log.With("part", "app-proxy"))
		app = proxy
	} else {
		app = web.Landing(n.cfg.Node.ID, n.version, n.partList)
	}
	fleetTLS, err := n.buildFleetTLS()
	if err != nil {
		return err
	}
	n.fleetTLS = fleetTLS
	opts := transport.Options{
		Listener:   n.httpsLn,
		Certs:      certs,
		App:        app,
		AltSvcPort: h.AltSvcPort,
		Limits:     httpsLimits(&h.Limits),
	}
	if n.httpsUDP != nil {
		opts.UDPConn = n.httpsUDP
	}
	if fleetTLS.acme != nil {
		opts.ACME = fleetTLS.acme
	}
	srv, err := transport.New(opts, n.log.With("part", "https"), n.reg)
	if err != nil {
		return err
	}
	if proxy != nil {
		proxy.Attach(srv)
	}
	n.https = srv
	stopWatch := make(chan struct{})
	var watchDone sync.WaitGroup
	n.parts = append(n.parts, &part{
		name:   "https",
		detail: "TLS (" + protoList(n.httpsUDP != nil) + ") on " + n.httpsLn.Addr().String() + appDetail(h.AppServer),
		start: func(context.Context) error {
			watchDone.Add(1)
			go func() { defer watchDone.Done(); certs.Watch(h.CertCheckInterval, stopWatch) }()
			return nil
		},
		serve: srv.Serve,
		drain: srv.Shutdown,
		stop: func(context.Context) error {
			close(stopWatch)
			watchDone.Wait()
			return nil
		},
		reload: certs.Reload,
	})
	return nil
}

// httpsLimits translates https.limits. The transport's zeros already mean
// what the config's do: no limit on the body size and connections per
// address; the keys where no limit cannot work are never 0.
func httpsLimits(l *config.Limits) transport.Limits {
	return transport.Limits{
		MaxHeaderBytes:           int(l.MaxHeaderBytes),
		MaxBodyBytes:             int64(l.MaxBodyBytes),
		ReadHeaderTimeout:        l.ReadHeaderTimeout,
		IdleTimeout:              l.IdleTimeout,
		MaxConnsPerIP:            l.MaxConnsPerIP,
		MaxWebsocketMessageBytes: int64(l.MaxWebsocketMessageBytes),
	}
}

// none translates the config's zero to a package's. In the config an
// explicit 0 means none (no limit, never, off) and a key left out already
// holds its default (see package config); in the packages' Options, as in
// the standard library, 0 means "the default" and a negative value means
// none. Keys whose 0 the config rejects need no translation.
func none[T int | float64 | time.Duration](v T) T {
	if v == 0 {
		return -1
	}
	return v
}

func protoList(h3 bool) string {
	if h3 {
		return "HTTP/3, HTTP/2, HTTP/1.1"
	}
	return "HTTP/2, HTTP/1.1"
}

func appDetail(app string) string {
	if app == "" {
		return "; no app server, built-in page"
	}
	return "; app server " + app
}

func (n *Node) buildAdmin() error {
	token, file, err := adminToken(n.cfg.Admin.Token, n.cfg.Node.DataDir)
	if err != nil {
		return err
	}
	if file != "" {
		n.log.Info("admin /v1/ routes need the bearer token in this file", "file", file)
	}
	n.admin, err = admin.New(n.adminLn, n.reg, token, n.log.With("part", "admin"))
	if err != nil {
		return err
	}
	n.parts = append(n.parts, &part{
		name:   "admin",
		detail: "http://" + n.adminLn.Addr().String() + " (/healthz /readyz /metrics /debug/pprof/)",
		serve:  n.admin.Serve,
		stop:   n.admin.Shutdown,
	})
	return nil
}

func (n *Node) partList() []web.Part {
	out := make([]web.Part, 0, len(n.parts))
	for _, p := range n.parts {
		out = append(out, web.Part{Name: p.name, Detail: p.detail})
	}
	return out
}

// HTTPSAddr and AdminAddr are the bound addresses (useful with port 0).
func (n *Node) HTTPSAddr() net.Addr { return n.httpsLn.Addr() }
func (n *Node) AdminAddr() net.Addr { return n.adminLn.Addr() }

// Run starts every part, then waits: SIGHUP reloads, SIGTERM or SIGINT (or
// ctx ending) drains and stops. It returns nil after a clean drain.
func (n *Node) Run(ctx context.Context, signals <-chan os.Signal) error {
	started := 0
	serveErr := make(chan error, len(n.parts))
	var serving sync.WaitGroup
	var runErr error
	for _, p := range n.parts {
		if p.start != nil {
			if err := p.start(ctx); err != nil {
				runErr = fmt.Errorf("start %s: %w", p.name, err)
				break
			}
		}
		started++
		if p.serve != nil {
			serving.Add(1)
			go func(p *part) {
				defer serving.Done()
				if err := p.serve(); err != nil {
					serveErr <- fmt.Errorf("%s: %w", p.name, err)
				}
			}(p)
		}
		n.log.Info("part started", "part", p.name, "detail", p.detail)
	}
	if runErr == nil {
		n.admin.SetReady(true)
		n.log.Info("node ready", "node", n.cfg.Node.ID, "version", n.version)
		runErr = n.wait(ctx, signals, serveErr)
	}
	n.admin.SetReady(false)
	n.shutdown(started)
	serving.Wait()
	return runErr
}

func (n *Node) wait(ctx context.Context, signals <-chan os.Signal, serveErr <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			n.log.Info("stopping", "reason", ctx.Err())
			return nil
		case err := <-serveErr:
			n.log.Error("part failed", "err", err)
			return err
		case sig := <-signals:
			switch sig {
			case syscall.SIGHUP:
				n.reload()
			default:
				n.log.Info("stopping", "signal", sig.String())
				return nil
			}
		}
	}
}

func (n *Node) reload() {
	n.log.Info("reloading")
	for _, p := range n.parts {
		if p.reload == nil {
			continue
		}
		if err := p.reload(); err != nil {
			n.log.Error("reload failed; the part keeps its old state", "part", p.name, "err", err)
		} else {
			n.log.Info("reloaded", "part", p.name)
		}
	}
}

// shutdown drains then stops the first count parts. /readyz is already
// false. Drain (stop accepting, finish in-flight work) runs for every part in
// reverse order within one drain timeout; then each part stops, also in
// reverse, each with a short bound of its own.
func (n *Node) shutdown(count int) {
	start := time.Now()
	drainCtx, cancel := context.WithTimeout(context.Background(), n.cfg.Node.DrainTimeout)
	defer cancel()
	for i := 0; i < count; i++ {
		if p := n.parts[i]; p.announce != nil {
			if err := p.announce(drainCtx); err != nil {
				n.log.Warn("announce", "part", p.name, "err", err)
			}
		}
	}
	for i := count - 1; i >= 0; i-- {
		p := n.parts[i]
		if p.drain == nil {
			continue
		}
		if err := p.drain(drainCtx); err != nil {
			n.log.Warn("drain did not finish in time; connections cut", "part", p.name, "err", err)
		}
	}
	for i := count - 1; i >= 0; i-- {
		p := n.parts[i]
		if p.stop == nil {
			continue
		}
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := p.stop(stopCtx); err != nil {
			n.log.Warn("stop", "part", p.name, "err", err)
		}
		cancel()
	}
	n.closeListeners()
	n.log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
}

// configVersion is a short hash of the effective config (secrets redacted),
// so the status page shows which nodes run which config.
func configVersion(c *config.Config) string {
	b, err := c.YAML()
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:4])
}
