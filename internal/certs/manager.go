package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ocsp"
)

// Options configure a Manager. Zero values take the documented defaults.
type Options struct {
	// Leader: this node orders and renews (the cron_leader). Every node,
	// leader or not, serves the certificates found in the KV.
	Leader bool
	NodeID string // names this node in lock records

	// CA is the ACME directory URL (default Let's Encrypt production);
	// Email the account contact (optional, recommended).
	CA    string
	Email string
	// CARoots, when set, are the roots trusted for the CA's own HTTPS API
	// (a private CA, or Pebble in tests).
	CARoots *x509.CertPool

	// Names get certificates as soon as the leader starts.
	Names []string
	// Ask enables on-demand certificates: a handshake for an unknown name
	// that the app server approves makes the leader order one. Nil: only
	// Names.
	Ask *AskOptions
	// MaxOnDemandNames bounds the on-demand names the leader manages
	// (default 1000).
	MaxOnDemandNames int
	// OnDemandWait is how long a handshake for a new approved name waits
	// for the leader's certificate before the fallback certificate answers
	// (default 8s). Keep it under the listener's handshake timeout
	// (https.limits.read_header_timeout), or the wait is cut there.
	OnDemandWait time.Duration

	// ChallengeHost and ChallengePort are the public TLS listener's
	// address, where the CA connects for TLS-ALPN-01 (default port 443).
	// Any node may receive the challenge: its answer is in the KV.
	ChallengeHost string
	ChallengePort int

	// RenewCheckInterval is how often the leader looks for certificates to
	// renew (default 10m); RenewalWindowRatio is the part of a
	// certificate's lifetime left when it is renewed (default 1/3).
	RenewCheckInterval time.Duration
	RenewalWindowRatio float64
}

const ondemandPrefix = "ondemand"

// Manager serves ACME certificates from the KV on every node and, on the
// leader, runs certmagic to order and renew them into the KV.
//
// State: the served table (name -> certificate) is an immutable map
// swapped whole on every reload, so handshakes never lock; reloads happen
// on the KV's change signal, so followers pick up new and renewed
// certificates without a restart.
type Manager struct {
	opts      Options
	kv        KV
	log       *slog.Logger
	m         *managerMetrics
	issuerKey string
	asker     *Asker
	storage   *Storage

	table   atomic.Pointer[certTable]
	mu      sync.Mutex
	changed chan struct{} // closed and replaced after each reload

	// Leader only.
	magic   *certmagic.Config
	cache   *certmagic.Cache
	managed map[string]bool // names handed to certmagic; touched by the run goroutine and Start

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type certTable struct {
	byName map[string]*tls.Certificate
	// stamps remember what each stored certificate file was when parsed, so
	// a reload only parses what changed.
	stamps map[string]loadedCert
}

type loadedCert struct {
	stamp   string
	cert    *tls.Certificate
	certPEM []byte
}

// New builds a Manager; nothing runs before Start.
func New(opts Options, kv KV, log *slog.Logger, reg prometheus.Registerer) (*Manager, error) {
	if kv == nil {
		return nil, errors.New("certs: a KV is required")
	}
	if opts.CA == "" {
		opts.CA = certmagic.LetsEncryptProductionCA
	}
	if opts.MaxOnDemandNames <= 0 {
		opts.MaxOnDemandNames = 1000
	}
	if opts.OnDemandWait <= 0 {
		opts.OnDemandWait = 8 * time.Second
	}
	if opts.ChallengePort == 0 {
		opts.ChallengePort = 443
	}
	if opts.RenewCheckInterval <= 0 {
		opts.RenewCheckInterval = 10 * time.Minute
	}
	for i, n := range opts.Names {
		n = NormalizeName(n)
		if err := ValidName(n); err != nil {
			return nil, fmt.Errorf("certs: name %q: %w", opts.Names[i], err)
		}
		opts.Names[i] = n
	}
	met, err := newManagerMetrics(reg)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		opts:      opts,
		kv:        kv,
		log:       log,
		m:         met,
		issuerKey: (&certmagic.ACMEIssuer{CA: opts.CA}).IssuerKey(),
		storage:   NewStorage(kv, opts.Leader, opts.NodeID),
		changed:   make(chan struct{}),
		managed:   map[string]bool{},
	}
	m.table.Store(&certTable{byName: map[string]*tls.Certificate{}, stamps: map[string]loadedCert{}})
	if opts.Ask != nil {
		a, err := NewAsker(*opts.Ask)
		if err != nil {
			return nil, fmt.Errorf("certs: %w", err)
		}
		m.asker = a
	}
	return m, nil
}

// Start loads the stored certificates, then follows the KV; the leader
// also starts ordering. ctx only bounds the start.
func (m *Manager) Start(ctx context.Context) error {
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if err := m.reload(ctx); err != nil {
		m.log.Warn("certs: stored certificates do not all load", "err", err)
	}
	certCh, cancelCerts := m.kv.Subscribe(certmagic.StorageKeys.CertsPrefix(m.issuerKey))
	ocspCh, cancelOCSP := m.kv.Subscribe("ocsp")
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer cancelCerts()
		defer cancelOCSP()
		for {
			select {
			case <-m.ctx.Done():
				return
			case <-ocspCh:
				if err := m.reload(m.ctx); err != nil {
					m.log.Warn("certs: stored certificates do not all load", "err", err)
				}
			case <-certCh:
				if err := m.reload(m.ctx); err != nil {
					m.log.Warn("certs: stored certificates do not all load", "err", err)
				}
			}
		}
	}()
	if !m.opts.Leader {
		m.log.Info("certs: follower; certificates come from the leader through storage", "names", m.opts.Names, "on_demand", m.asker != nil)
		return nil
	}
	m.startLeader()
	if err := m.magic.ManageAsync(m.ctx, m.opts.Names); err != nil {
		return fmt.Errorf("certs: manage %v: %w", m.opts.Names, err)
	}
	for _, n := range m.opts.Names {
		m.managed[n] = true
	}
	odCh, cancelOD := m.kv.Subscribe(ondemandPrefix)
	m.manageOnDemand()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer cancelOD()
		for {
			select {
			case <-m.ctx.Done():
				return
			case <-odCh:
				m.manageOnDemand()
			}
		}
	}()
	m.log.Info("certs: leader; ordering and renewing", "ca", m.opts.CA, "names", m.opts.Names, "on_demand", m.asker != nil)
	return nil
}

// Stop ends ordering, renewals and reloads and releases held locks.
func (m *Manager) Stop() {
	if m.cancel == nil {
		return
	}
	m.cancel()
	m.wg.Wait()
	if m.cache != nil {
		m.cache.Stop()
	}
	m.storage.Close()
}

func (m *Manager) startLeader() {
	zl := zapFor(m.log.With("component", "certmagic"))
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return m.magic, nil },
		RenewCheckInterval: m.opts.RenewCheckInterval,
		Logger:             zl,
	})
	m.magic = certmagic.New(m.cache, certmagic.Config{
		Storage:            m.storage,
		RenewalWindowRatio: m.opts.RenewalWindowRatio,
		Logger:             zl,
		OnEvent: func(_ context.Context, event string, _ map[string]any) error {
			switch event {
			case "cert_obtaining", "cert_obtained", "cert_failed":
				m.m.events.WithLabelValues(event).Inc()
			}
			return nil
		},
	})
	m.magic.Issuers = []certmagic.Issuer{certmagic.NewACMEIssuer(m.magic, certmagic.ACMEIssuer{
		CA:     m.opts.CA,
		Email:  m.opts.Email,
		Agreed: true,
		// The public listener answers TLS-ALPN-01 on the HTTPS port;
		// there is no port 80 listener for HTTP-01.
		DisableHTTPChallenge: true,
		ListenHost:           m.opts.ChallengeHost,
		AltTLSALPNPort:       m.opts.ChallengePort,
		TrustedRoots:         m.opts.CARoots,
		Logger:               zl,
	})}
}

// manageOnDemand hands names that nodes requested (after the ask check)
// to certmagic, up to MaxOnDemandNames.
func (m *Manager) manageOnDemand() {
	keys, err := m.kv.List(m.ctx, ondemandPrefix)
	if err != nil {
		m.log.Warn("certs: list on-demand names", "err", err)
		return
	}
	var add []string
	count := 0
	for _, k := range keys {
		name := path.Base(k)
		if ValidName(name) != nil {
			continue
		}
		if m.managed[name] {
			count++
			continue
		}
		if count >= m.opts.MaxOnDemandNames {
			m.log.Warn("certs: on-demand name over the limit, not ordered", "name", name, "max", m.opts.MaxOnDemandNames)
			continue
		}
		count++
		add = append(add, name)
	}
	if len(add) == 0 {
		return
	}
	if err := m.magic.ManageAsync(m.ctx, add); err != nil {
		m.log.Warn("certs: manage on-demand names", "names", add, "err", err)
		return
	}
	for _, n := range add {
		m.managed[n] = true
	}
	m.log.Info("certs: managing on-demand names", "names", add)
}

// Renew renews name now, whatever its expiry (leader only).
func (m *Manager) Renew(ctx context.Context, name string) error {
	if !m.opts.Leader || m.magic == nil {
		return ErrNotLeader
	}
	return m.magic.RenewCertSync(ctx, NormalizeName(name), true)
}

// reload reads every stored certificate of our CA and swaps the table.
func (m *Manager) reload(ctx context.Context) error {
	prefix := certmagic.StorageKeys.CertsPrefix(m.issuerKey)
	keys, err := m.kv.List(ctx, prefix)
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	old := m.table.Load()
	next := &certTable{byName: map[string]*tls.Certificate{}, stamps: map[string]loadedCert{}}
	var errs []error
	for _, k := range keys {
		if !strings.HasSuffix(k, ".crt") {
			continue
		}
		keyKey := strings.TrimSuffix(k, ".crt") + ".key"
		st1, err1 := m.kv.Stat(ctx, k)
		st2, err2 := m.kv.Stat(ctx, keyKey)
		if err1 != nil || err2 != nil {
			continue // half written, or being deleted: next signal
		}
		stamp := fmt.Sprintf("%d/%d/%d/%d", st1.Size, st1.Modified.UnixNano(), st2.Size, st2.Modified.UnixNano())
		lc, ok := old.stamps[k]
		if ok {
			// A new OCSP staple (the leader refreshes them) is a change too.
			stamp += m.stapleStamp(ctx, lc.cert, lc.certPEM)
		}
		if !ok || lc.stamp != stamp {
			c, certPEM, err := m.loadPair(ctx, k, keyKey)
			if err != nil {
				errs = append(errs, err)
				if ok {
					lc.stamp = stamp // keep serving the previous one
					next.stamps[k] = lc
				}
				continue
			}
			m.staple(ctx, c, certPEM)
			lc = loadedCert{stamp: stamp, cert: c, certPEM: certPEM}
			if !ok {
				lc.stamp += m.stapleStamp(ctx, c, certPEM)
			}
		}
		next.stamps[k] = lc
	}
	for _, lc := range next.stamps {
		for _, n := range lc.cert.Leaf.DNSNames {
			n = NormalizeName(n)
			// Two certificates for one name (a renewal caught mid-way):
			// the one that lasts longer wins.
			if cur, ok := next.byName[n]; !ok || lc.cert.Leaf.NotAfter.After(cur.Leaf.NotAfter) {
				next.byName[n] = lc.cert
			}
		}
	}
	m.table.Store(next)
	m.m.served.Set(float64(len(next.byName)))
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
	for n, c := range next.byName {
		if prev := old.byName[n]; prev != c {
			m.log.Info("certs: serving certificate", "name", n, "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) loadPair(ctx context.Context, certKey, keyKey string) (*tls.Certificate, []byte, error) {
	certPEM, err := m.kv.Get(ctx, certKey)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := m.kv.Get(ctx, keyKey)
	if err != nil {
		return nil, nil, err
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certKey, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", certKey, err)
		}
	}
	return &c, certPEM, nil
}

// stapleKeys are where certmagic (on the leader) stores the OCSP response
// of a certificate: "ocsp/<first name>-<FNV-32a of the PEM chain>", where
// the PEM is either the stored file or the chain re-encoded (certmagic
// uses both, depending on the path that stapled).
func stapleKeys(c *tls.Certificate, certPEM []byte) []string {
	if len(c.Leaf.OCSPServer) == 0 {
		return nil
	}
	first := ""
	if c.Leaf.Subject.CommonName != "" {
		first = strings.ToLower(c.Leaf.Subject.CommonName)
	} else if len(c.Leaf.DNSNames) > 0 {
		first = strings.ToLower(c.Leaf.DNSNames[0])
	}
	var reenc []byte
	for _, der := range c.Certificate {
		reenc = append(reenc, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	var keys []string
	for _, b := range [][]byte{certPEM, reenc} {
		h := fnv.New32a()
		h.Write(b)
		k := path.Join("ocsp", certmagic.StorageKeys.Safe(first)+"-"+fmt.Sprintf("%x", h.Sum32()))
		if len(keys) == 0 || keys[0] != k {
			keys = append(keys, k)
		}
	}
	return keys
}

func (m *Manager) stapleStamp(ctx context.Context, c *tls.Certificate, certPEM []byte) string {
	var b strings.Builder
	for _, k := range stapleKeys(c, certPEM) {
		if st, err := m.kv.Stat(ctx, k); err == nil {
			fmt.Fprintf(&b, "/%s:%d:%d", k, st.Size, st.Modified.UnixNano())
		}
	}
	return b.String()
}

// staple attaches the leader's OCSP response to c when there is a good,
// current one in storage, so every node staples what the leader fetched
// (followers never ask the CA's responder themselves).
func (m *Manager) staple(ctx context.Context, c *tls.Certificate, certPEM []byte) {
	for _, k := range stapleKeys(c, certPEM) {
		b, err := m.kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var issuer *x509.Certificate
		if len(c.Certificate) > 1 {
			issuer, _ = x509.ParseCertificate(c.Certificate[1])
		}
		resp, err := ocsp.ParseResponseForCert(b, c.Leaf, issuer)
		if err != nil || resp.Status != ocsp.Good || time.Now().After(resp.NextUpdate) {
			continue
		}
		c.OCSPStaple = b
		return
	}
}

// Has reports whether a certificate for name is being served.
func (m *Manager) Has(name string) bool {
	_, ok := m.table.Load().byName[NormalizeName(name)]
	return ok
}

// Certificate returns the served certificate for name, or nil.
func (m *Manager) Certificate(name string) *tls.Certificate {
	return m.table.Load().byName[NormalizeName(name)]
}

// GetCertificate is for the transport: TLS-ALPN-01 challenges (from the
// KV, whichever node started them), then the stored certificates, then
// on-demand names. A nil certificate with a nil error lets the next source
// (the file certificates) answer.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmez.ACMETLS1Protocol {
		return m.challengeCert(hello)
	}
	name := NormalizeName(hello.ServerName)
	if name == "" {
		return nil, nil
	}
	if c := m.table.Load().byName[name]; c != nil {
		return c, nil
	}
	if m.asker == nil {
		return nil, nil
	}
	ctx := hello.Context()
	d := m.asker.Decide(ctx, name, clientAddr(hello))
	m.m.decisions.WithLabelValues(d).Inc()
	if d != DecisionAllowed {
		return nil, nil
	}
	return m.waitOnDemand(ctx, name)
}

// waitOnDemand asks the leader for name (through the KV) and waits for its
// certificate, up to OnDemandWait.
func (m *Manager) waitOnDemand(ctx context.Context, name string) (*tls.Certificate, error) {
	key := ondemandPrefix + "/" + name
	if err := m.kv.Create(ctx, key, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil && !errors.Is(err, fs.ErrExist) {
		m.log.Warn("certs: request on-demand certificate", "name", name, "err", err)
		return nil, nil
	}
	timer := time.NewTimer(m.opts.OnDemandWait)
	defer timer.Stop()
	for {
		m.mu.Lock()
		changed := m.changed
		m.mu.Unlock()
		if c := m.table.Load().byName[name]; c != nil {
			return c, nil
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, nil
		case <-ctx.Done():
			return nil, nil
		}
	}
}

// challengeCert answers a TLS-ALPN-01 validation from the challenge that
// the leader's certmagic stored (distributed solving): the CA may reach any
// node, since DNS sends it to any of them.
func (m *Manager) challengeCert(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := NormalizeName(hello.ServerName)
	if name == "" {
		return nil, errors.New("certs: TLS-ALPN-01 without a server name")
	}
	key := path.Join("acme", certmagic.StorageKeys.Safe(m.issuerKey), "challenge_tokens", certmagic.StorageKeys.Safe(name)+".json")
	b, err := m.kv.Get(hello.Context(), key)
	if err != nil {
		m.m.challenges.WithLabelValues("unknown").Inc()
		return nil, fmt.Errorf("certs: no TLS-ALPN-01 challenge for %q: %w", name, err)
	}
	var chal acme.Challenge
	if err := json.Unmarshal(b, &chal); err != nil {
		m.m.challenges.WithLabelValues("unknown").Inc()
		return nil, fmt.Errorf("certs: challenge for %q: %w", name, err)
	}
	c, err := acmez.TLSALPN01ChallengeCert(chal)
	if err != nil {
		m.m.challenges.WithLabelValues("unknown").Inc()
		return nil, fmt.Errorf("certs: challenge certificate for %q: %w", name, err)
	}
	m.m.challenges.WithLabelValues("answered").Inc()
	m.log.Info("certs: answered TLS-ALPN-01 challenge", "name", name, "remote", remoteString(hello))
	return c, nil
}

func clientAddr(hello *tls.ClientHelloInfo) netip.Addr {
	if hello.Conn == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(hello.Conn.RemoteAddr().String())
	if err != nil {
		host, _, _ := net.SplitHostPort(hello.Conn.RemoteAddr().String())
		a, _ := netip.ParseAddr(host)
		return a.Unmap()
	}
	return ap.Addr().Unmap()
}

func remoteString(hello *tls.ClientHelloInfo) string {
	if hello.Conn == nil {
		return ""
	}
	return hello.Conn.RemoteAddr().String()
}

type managerMetrics struct {
	decisions  *prometheus.CounterVec
	events     *prometheus.CounterVec
	challenges *prometheus.CounterVec
	served     prometheus.Gauge
}

// newManagerMetrics makes the manager's metrics and registers them on reg.
// A registration that fails (a second Manager on one registry) is returned
// as an error, never a panic: docs/metrics.md.
func newManagerMetrics(reg prometheus.Registerer) (*managerMetrics, error) {
	m := &managerMetrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_acme_on_demand_decisions_total", Help: "On-demand certificate decisions for unknown names seen in SNI.",
		}, []string{"result"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_acme_events_total", Help: "Certificate orders on the leader: cert_obtaining, cert_obtained, cert_failed (renewals included).",
		}, []string{"event"}),
		challenges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgenode_acme_tls_alpn_challenges_total", Help: "TLS-ALPN-01 validations received, answered or unknown.",
		}, []string{"result"}),
		served: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgenode_acme_names_served", Help: "Names with an ACME certificate served from shared storage.",
		}),
	}
	for _, d := range []string{DecisionAllowed, DecisionRefused, DecisionInvalid, DecisionRateLimited, DecisionError} {
		m.decisions.WithLabelValues(d)
	}
	for _, e := range []string{"cert_obtaining", "cert_obtained", "cert_failed"} {
		m.events.WithLabelValues(e)
	}
	for _, c := range []prometheus.Collector{m.decisions, m.events, m.challenges, m.served} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("certs: register metrics: %w", err)
		}
	}
	return m, nil
}
