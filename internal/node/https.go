package node

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/admin"
	fleet "github.com/edgenode/edgenode/internal/certs"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/transport"
	"github.com/edgenode/edgenode/internal/web"
)

// httpsPart is the public TLS listener (HTTP/1.1, HTTP/2 and HTTP/3). It
// serves from its Start; on the way out it drains (stops accepting, lets
// requests in flight finish, asks websockets to reconnect elsewhere).
type httpsPart struct {
	srv      *transport.Server
	certs    *transport.CertStore
	interval time.Duration // https.cert_check_interval; 0: no watching
	detail   string
	log      *slog.Logger

	// The app server: what app serves, the https.app_server it serves
	// (changed by reloads, on Run's goroutine) and how to make it.
	app       *appHandler
	appTarget string
	newApp    func(target string) (http.Handler, error)

	serving   serving
	stopWatch chan struct{}
	watching  sync.WaitGroup
	drained   bool
}

func (p *httpsPart) Name() string   { return "https" }
func (p *httpsPart) Detail() string { return p.detail }

func (p *httpsPart) Start(context.Context) error {
	p.stopWatch = make(chan struct{})
	p.watching.Go(func() { p.certs.Watch(p.interval, p.stopWatch) })
	p.serving.start(p.Name(), p.srv.Serve)
	return nil
}

func (p *httpsPart) Drain(ctx context.Context) error {
	p.drained = true
	return p.srv.Shutdown(ctx)
}

// Stop shuts the server down at once if it was not drained (a start that
// failed further on), then waits for serving and watching to end.
func (p *httpsPart) Stop(ctx context.Context) error {
	var err error
	if !p.drained {
		err = p.srv.Shutdown(ctx)
	}
	err = errors.Join(err, p.serving.wait(ctx))
	if p.stopWatch != nil {
		close(p.stopWatch)
		p.watching.Wait()
	}
	return err
}

func (p *httpsPart) Reload() error { return p.certs.Reload() }

// buildHTTPS builds the public listener's server on the bound listeners;
// acme, when set, answers TLS-ALPN challenges and serves the fleet's
// certificates.
func (n *Node) buildHTTPS(acme *fleet.Manager) (*httpsPart, error) {
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
			return nil, fmt.Errorf("https: self-signed certificate: %w", err)
		}
		sources = append(sources, transport.CertSource{CertFile: cert, KeyFile: key})
	}
	certs, err := transport.NewCertStore(sources, n.log.With("part", "https"))
	if err != nil {
		return nil, fmt.Errorf("https.certificates: %w", err)
	}
	if err := n.registerCertExpiry(sources, acme); err != nil {
		return nil, err
	}
	// The server and the app proxy each need the other: the proxy is made
	// once the server is (newApp runs after transport.New).
	var srv *transport.Server
	newApp := func(target string) (http.Handler, error) {
		if target == "" {
			return web.Landing(n.cfg.Node.ID, n.version, n.partList), nil
		}
		u, err := url.Parse(target)
		if err != nil {
			return nil, fmt.Errorf("https.app_server: %w", err)
		}
		proxy := transport.NewAppProxy(u, n.log.With("part", "app-proxy"))
		proxy.Attach(srv)
		return proxy, nil
	}
	if _, err := url.Parse(h.AppServer); err != nil {
		return nil, fmt.Errorf("https.app_server: %w", err)
	}
	app := &appHandler{}
	opts := transport.Options{
		Listener:   n.httpsLn,
		Certs:      certs,
		App:        app,
		AltSvcPort: h.AltSvcPort,
		Limits:     httpsLimits(&h.Limits),
		NetHTTP2:   h.HTTP2Server == config.HTTP2NetHTTP,
	}
	if n.httpsUDP != nil {
		opts.UDPConn = n.httpsUDP
	}
	if acme != nil {
		opts.ACME = acme
	}
	srv, err = transport.New(opts, n.log.With("part", "https"), n.reg)
	if err != nil {
		return nil, err
	}
	first, err := newApp(h.AppServer)
	if err != nil {
		return nil, err
	}
	app.set(first)
	n.https = srv
	return &httpsPart{
		srv:       srv,
		certs:     certs,
		interval:  h.CertCheckInterval,
		detail:    "TLS (" + protoList(n.httpsUDP != nil) + ") on " + n.httpsLn.Addr().String() + appDetail(h.AppServer),
		log:       n.log.With("part", "https"),
		app:       app,
		appTarget: h.AppServer,
		newApp:    newApp,
		serving:   serving{failures: n.failures},
	}, nil
}

// appHandler serves requests no part claims with the app server's proxy
// (or the landing page); a reload swaps it. Requests and websockets in
// flight finish with the handler they started with.
type appHandler struct{ h atomic.Pointer[http.Handler] }

func (a *appHandler) set(h http.Handler) { a.h.Store(&h) }

func (a *appHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*a.h.Load()).ServeHTTP(w, r)
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
func none[T int | int64 | float64 | time.Duration](v T) T {
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

// adminPart is the operators' listener: health, readiness, metrics,
// profiling, and the routes other parts add (publish, purge, status).
type adminPart struct {
	srv     *admin.Server
	detail  string
	serving serving
}

func (p *adminPart) Name() string   { return "admin" }
func (p *adminPart) Detail() string { return p.detail }

func (p *adminPart) Start(context.Context) error {
	p.serving.start(p.Name(), p.srv.Serve)
	return nil
}

func (p *adminPart) Stop(ctx context.Context) error {
	return errors.Join(p.srv.Shutdown(ctx), p.serving.wait(ctx))
}

func (n *Node) buildAdmin() (*adminPart, error) {
	token, file, err := adminToken(n.cfg.Admin.Token, n.cfg.Node.DataDir)
	if err != nil {
		return nil, err
	}
	if file != "" {
		n.log.Info("admin /v1/ routes need the bearer token in this file", "file", file)
	}
	srv, err := admin.New(n.adminLn, n.reg, token, n.log.With("part", "admin"))
	if err != nil {
		return nil, err
	}
	n.admin = srv
	// /readyz as a metric, for the "not ready" alert: Prometheus scrapes
	// /metrics, not /readyz.
	readyGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "edgenode_ready",
		Help: "1 when /readyz answers 200 (started, not draining, every readiness check passing), else 0."},
		func() float64 {
			if srv.Readiness() != nil {
				return 0
			}
			return 1
		})
	if err := n.reg.Register(readyGauge); err != nil {
		return nil, fmt.Errorf("metrics: register edgenode_ready: %w", err)
	}
	return &adminPart{
		srv:     srv,
		detail:  "http://" + n.adminLn.Addr().String() + " (/healthz /readyz /metrics /debug/pprof/)",
		serving: serving{failures: n.failures},
	}, nil
}

// registerCertExpiry exports the days left of every certificate the node
// uses (edgenode_tls_certificate_expiry_seconds), for the alert rules.
func (n *Node) registerCertExpiry(sources []transport.CertSource, acme *fleet.Manager) error {
	var files []fleet.CertFile
	for _, s := range sources {
		files = append(files, fleet.CertFile{Use: "https", Path: s.CertFile})
	}
	if m := n.cfg.Mesh; m.Enabled {
		files = append(files, fleet.CertFile{Use: "mesh", Path: m.Cert}, fleet.CertFile{Use: "mesh_ca", Path: m.CACert})
	}
	var managed func() []*x509.Certificate
	if acme != nil {
		managed = acme.Leaves
	}
	return fleet.RegisterExpiry(n.reg, files, managed)
}
