// Package node builds every part of an edgenode process from the config,
// starts them in order, reloads them on SIGHUP, and on SIGTERM drains and
// stops them in reverse order.
//
// Every part implements Part, one lifecycle for all: Start, then on the way
// out Announce, Drain and Stop for those that have them. startOrder
// declares, in one place, the order the parts start in and why each comes
// where it does.
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
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/edgenode/edgenode/internal/admin"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/transport"
	"github.com/edgenode/edgenode/internal/web"
)

// Node is one running edgenode process.
type Node struct {
	cfg        config.Config
	log        *slog.Logger
	version    string
	reg        *prometheus.Registry
	cfgVersion string // a hash of the effective config, gossiped so rolling changes show

	httpsLn  net.Listener
	httpsUDP net.PacketConn // HTTP/3; nil when https.http3 is off
	adminLn  net.Listener

	https *transport.Server // set once built: it then owns httpsUDP
	admin *admin.Server     // /readyz follows the node's state
	mesh  *mesh.Mesh        // nil without a mesh: gossips the config version
	// static is the node map without a mesh (nil with one): a reload
	// republishes it with the new config version.
	static *nodemap.Publisher

	// Reload (see reload.go): how to read the config again, the level of
	// the node's logger, the reload metrics.
	load      func() (config.Config, error)
	level     *slog.LevelVar
	reloadMet *reloadMetrics
	cdnMax    prometheus.Gauge // edgenode_cdn_max_bytes; nil without the CDN
	// running is cfg for other goroutines (GET /v1/config/pending):
	// replaced whole after each reload.
	running atomic.Pointer[config.Config]

	// failures receives the error of a serving part whose server stopped
	// on its own (see serving); Run stops the node on the first.
	failures chan error
	parts    []Part // in start order
}

// built is every part New built; nil for those the config leaves out.
type built struct {
	https        *httpsPart
	admin        *adminPart
	mesh         *meshPart
	load         *loadReporter
	dns          *dnsPart
	rum          *rumPart
	mongoDB      *embeddedDB
	mongo        *mongoPart
	cdn          *cdnPart
	cdnPeer      *peerFillPart
	purges       *purgeLog
	pubsub       *pubsubPart
	status       *statusPart
	demo         *demoPart
	fleetStorage *fleetStorage
	tickets      *ticketsPart
	acme         *acmePart
	readiness    *readinessReporter
}

// startOrder is the one place the order of the parts is declared. Run
// starts them in this order; on SIGTERM every started part announces, in
// this order, then they drain and stop in reverse. Parts the config leaves
// out are skipped.
func startOrder(b *built) []Part {
	all := []Part{
		// First, so HTTPS drains after pubsub and stops after every part
		// whose routes it serves. It serves from here on: until the fleet
		// TLS parts run, with its own ticket keys and its file or
		// self-signed certificates.
		opt(b.https),
		// Early, so /healthz, /metrics and pprof answer while the rest
		// starts (/readyz is 503 until every part has started), and late
		// out: it stops after every part that added routes to it.
		opt(b.admin),
		// Before every part that uses peers: DNS reads its node map, Mongo
		// replicates over it, pubsub and the CDN fan out through it, the
		// status page shares figures. It announces draining before any
		// part drains and leaves once all have stopped.
		opt(b.mesh),
		// After the mesh, which it feeds this node's load.
		opt(b.load),
		// After the mesh, which carries its digests; before DNS, which
		// reads its preferences.
		opt(b.rum),
		// After the node map (the mesh's, or the static one) it answers from.
		opt(b.dns),
		// The embedded database before the proxy in front of it, which
		// reads its address at start; it stops after the proxy.
		opt(b.mongoDB),
		// After the database and the mesh (replication); before the parts
		// that use the proxy (the demo, the fleet storage). It stops, never
		// drains: the app's requests in flight while HTTPS drains may still
		// need the database.
		opt(b.mongo),
		// Its routes are on HTTPS: it closes after HTTPS has drained.
		opt(b.cdn),
		// After the cache it serves and the mesh whose node map and
		// certificates admit its clients; it drains and stops before the
		// cache closes.
		opt(b.cdnPeer),
		// After Mongo (its collection is reached through the proxy) and the
		// cache it purges; it stops before both.
		opt(b.purges),
		// After HTTPS, so it drains before HTTPS does: subscribers get
		// reconnect-elsewhere before their connections close.
		opt(b.pubsub),
		// After the parts whose figures it shows; it stops before the admin
		// listener, whose shutdown waits for the page's event streams.
		opt(b.status),
		// After Mongo and pubsub, which it uses.
		opt(b.demo),
		// After Mongo: with https.fleet_storage mongo the fleet's TLS
		// material is in the replicated collection, reached through the
		// proxy. It stops after the two parts below, which use it.
		opt(b.fleetStorage),
		// After the storage, where the cluster's keys are.
		opt(b.tickets),
		// After the storage, where the certificates are.
		opt(b.acme),
		// Last: the node says it is ready only once every part has
		// started. It stops first, before the mesh announces draining.
		opt(b.readiness),
	}
	parts := all[:0]
	for _, p := range all {
		if p != nil {
			parts = append(parts, p)
		}
	}
	return parts
}

// Errors a caller may want to tell apart.
var (
	ErrListen = errors.New("cannot listen")
)

// New checks that every address can be bound (keeping the public and admin
// listeners), then builds the parts. Nothing is written to the data folder
// before the addresses are known to be free.
func New(cfg config.Config, log *slog.Logger, version string) (_ *Node, err error) {
	n := &Node{cfg: cfg, log: log, version: version, reg: prometheus.NewRegistry(), cfgVersion: configVersion(&cfg),
		failures: make(chan error, 1)}
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
	if err := registerProcessMetrics(n.reg, version, cfg.Node.ID); err != nil {
		return nil, err
	}
	if n.cdnMax, err = registerLimits(n.reg, &cfg); err != nil {
		return nil, err
	}
	if n.reloadMet, err = newReloadMetrics(n.reg); err != nil {
		return nil, err
	}
	b, err := n.build()
	if err != nil {
		return nil, err
	}
	n.parts = startOrder(b)
	n.running.Store(&cfg)
	n.admin.Handle("GET /v1/config/pending", http.HandlerFunc(n.servePending))
	return n, nil
}

// build builds every part the config turns on, each given the parts it
// uses.
func (n *Node) build() (*built, error) {
	b := &built{}
	// The fleet's TLS storage and ACME manager come first: the HTTPS
	// server answers ACME challenges and serves its certificates.
	ft, err := n.buildFleetTLS()
	if err != nil {
		return nil, err
	}
	if b.https, err = n.buildHTTPS(ft.acme); err != nil {
		return nil, err
	}
	if b.admin, err = n.buildAdmin(); err != nil {
		return nil, err
	}
	var nodes nodemap.Source
	if n.cfg.Mesh.Enabled {
		if b.mesh, err = n.buildMesh(); err != nil {
			return nil, err
		}
		b.load = newLoadReporter(b.mesh.m.SetLoad, loadInterval)
		nodes = b.mesh.m
		n.mesh = b.mesh.m
	} else {
		n.static = nodemap.NewPublisher(staticNodes(&n.cfg, n.version, n.cfgVersion))
		nodes = n.static
	}
	n.admin.Handle("GET /status.json", statusJSON(nodes, n.cfg.Node.ID, n.version))
	if n.cfg.DNS.Enabled && n.cfg.DNS.Measured.Enabled {
		if b.rum, err = n.buildRUM(nodes, b.mesh); err != nil {
			return nil, err
		}
	}
	if n.cfg.DNS.Enabled {
		if b.dns, err = n.buildDNS(nodes, b.rum); err != nil {
			return nil, err
		}
	}
	if n.cfg.Mongo.Enabled {
		if b.mongoDB, b.mongo, err = n.buildMongo(b.mesh); err != nil {
			return nil, err
		}
	}
	if n.cfg.CDN.Enabled {
		if b.cdn, b.cdnPeer, err = n.buildCDN(b.mesh); err != nil {
			return nil, err
		}
		if b.purges, err = n.buildPurgeLog(b.cdn, b.mongo); err != nil {
			return nil, err
		}
	}
	if n.cfg.PubSub.Enabled {
		if b.pubsub, err = n.buildPubSub(b.mesh); err != nil {
			return nil, err
		}
	}
	if n.cfg.Web.Status {
		// Named: the parts built so far, whose figures the page shows.
		if b.status, err = n.buildStatus(nodes, b.mesh, b.rum, partNames(startOrder(b))); err != nil {
			return nil, err
		}
	}
	if n.cfg.Web.Demo.Enabled {
		if b.demo, err = n.buildDemo(b.pubsub); err != nil {
			return nil, err
		}
	}
	if b.fleetStorage, err = newFleetStorage(ft, b.mongo, &n.cfg); err != nil {
		return nil, err
	}
	if b.tickets, b.acme, err = n.buildFleetTLSParts(ft); err != nil {
		return nil, err
	}
	b.readiness = n.buildReadiness(b.mesh, b.mongo)
	return b, nil
}

func partNames(parts []Part) []string {
	names := make([]string, len(parts))
	for i, p := range parts {
		names[i] = p.Name()
	}
	return names
}

// registerProcessMetrics registers the Go and process collectors and the
// build info.
func registerProcessMetrics(reg prometheus.Registerer, version, id string) error {
	for _, c := range []struct {
		name string
		c    prometheus.Collector
	}{
		{"Go", collectors.NewGoCollector()},
		{"process", collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})},
		{"build info", buildInfo(version, id)},
	} {
		if err := reg.Register(c.c); err != nil {
			return fmt.Errorf("metrics: register the %s collector: %w", c.name, err)
		}
	}
	return nil
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

func (n *Node) partList() []web.Part {
	out := make([]web.Part, 0, len(n.parts))
	for _, p := range n.parts {
		out = append(out, web.Part{Name: p.Name(), Detail: p.Detail()})
	}
	return out
}

// HTTPSAddr and AdminAddr are the bound addresses (useful with port 0).
func (n *Node) HTTPSAddr() net.Addr { return n.httpsLn.Addr() }
func (n *Node) AdminAddr() net.Addr { return n.adminLn.Addr() }

// Run starts every part, then waits: SIGHUP reloads, SIGTERM or SIGINT (or
// ctx ending) drains and stops. ctx also bounds the start of each part
// (see Part.Start). Run returns nil after a clean drain, even when a part
// did not stop cleanly (that is logged); when a part failed to start or
// its server failed, it returns that error joined with the Stop errors.
func (n *Node) Run(ctx context.Context, signals <-chan os.Signal) error {
	lc := &lifecycle{parts: n.parts, log: n.log}
	runErr := lc.start(ctx)
	if runErr == nil {
		n.admin.SetReady(true)
		n.log.Info("node ready", "node", n.cfg.Node.ID, "version", n.version)
		runErr = n.wait(ctx, signals, lc)
	}
	n.admin.SetReady(false)
	begin := time.Now()
	stopErr := lc.shutdown(n.cfg.Node.DrainTimeout)
	n.closeListeners()
	n.log.Info("stopped", "took", time.Since(begin).Round(time.Millisecond))
	if runErr != nil {
		return errors.Join(runErr, stopErr)
	}
	return nil
}

func (n *Node) wait(ctx context.Context, signals <-chan os.Signal, lc *lifecycle) error {
	for {
		select {
		case <-ctx.Done():
			n.log.Info("stopping", "reason", ctx.Err())
			return nil
		case err := <-n.failures:
			n.log.Error("part failed", "err", err)
			return err
		case sig := <-signals:
			switch sig {
			case syscall.SIGHUP:
				n.reloadConfig(lc)
			default:
				n.log.Info("stopping", "signal", sig.String())
				return nil
			}
		}
	}
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
