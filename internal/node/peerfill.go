package node

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/edgenode/edgenode/internal/cdn"
	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/nodemap"
)

// peerFillRoute is where the peer listener serves the cache's PeerHandler;
// the handler reads the {key} path value.
const (
	peerFillPrefix = "/v1/cdn/peer/"
	peerFillRoute  = "GET " + peerFillPrefix + "{key...}"
)

// peerFillPart is the media cache's peer listener: HTTPS with mutual TLS
// between node certificates of the fleet CA, serving cached media to the
// other nodes of the node map (see cdn's peer fill). A client certificate
// from another CA, none, or one naming no node of the map is refused in
// the handshake.
type peerFillPart struct {
	addr    string
	tls     *tls.Config
	srv     *http.Server
	log     *slog.Logger
	serving serving
	detail  string
}

func (p *peerFillPart) Name() string   { return "cdn-peer" }
func (p *peerFillPart) Detail() string { return p.detail }

// Start binds the listener (probed free by New) and serves on it.
func (p *peerFillPart) Start(context.Context) error {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("cdn.peer_fill.listen: %w: %w", ErrListen, err)
	}
	p.detail = "media peer fill over mutual TLS on " + ln.Addr().String()
	tln := tls.NewListener(ln, p.tls)
	p.serving.start(p.Name(), func() error {
		if err := p.srv.Serve(tln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return nil
}

// Drain lets the transfers in flight to peers finish; a peer that is cut
// falls back to the origin.
func (p *peerFillPart) Drain(ctx context.Context) error { return p.srv.Shutdown(ctx) }

func (p *peerFillPart) Stop(ctx context.Context) error {
	return errors.Join(p.srv.Close(), p.serving.wait(ctx))
}

// peerTLS is this node's certificate and the fleet CA, from the mesh's
// files, checked as the mesh checks them at start.
type peerTLS struct {
	cert  tls.Certificate
	roots *x509.CertPool
}

func (n *Node) loadPeerTLS() (*peerTLS, error) {
	m := n.cfg.Mesh
	roots, err := pki.LoadCAPool(m.CACert)
	if err != nil {
		return nil, fmt.Errorf("cdn.peer_fill: mesh.ca_cert: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(m.Cert, m.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cdn.peer_fill: mesh.cert: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("cdn.peer_fill: mesh.cert: %w", err)
	}
	if id, err := pki.VerifyNode([]*x509.Certificate{leaf}, roots, time.Now()); err != nil {
		return nil, fmt.Errorf("cdn.peer_fill: mesh.cert: %w", err)
	} else if id != n.cfg.Node.ID {
		return nil, fmt.Errorf("cdn.peer_fill: mesh.cert names node %q, but this node is %q", id, n.cfg.Node.ID)
	}
	return &peerTLS{cert: cert, roots: roots}, nil
}

// buildPeerFill builds the peer listener in front of cache and the peers
// the cache asks, both over nodes.
func (n *Node) buildPeerFill(cache *cdn.Cache, pt *peerTLS, nodes nodemap.Source) *peerFillPart {
	log := n.log.With("part", "cdn-peer")
	mux := http.NewServeMux()
	mux.Handle(peerFillRoute, cache.PeerHandler())
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pt.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pt.roots,
		// The chain is verified against the fleet CA by the handshake;
		// the certificate must also name a node this node knows of: a
		// certificate of a node removed from the fleet reads nothing.
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := pki.VerifyNode(cs.PeerCertificates, pt.roots, time.Now())
			if err != nil {
				return err
			}
			if m, _ := nodes.Current(); !hasNode(m, id) {
				return fmt.Errorf("node %q is not in the node map", id)
			}
			return nil
		},
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug), // refused handshakes
	}
	return &peerFillPart{addr: n.cfg.CDN.PeerFill.Listen, tls: cfg, srv: srv, log: log, serving: serving{failures: n.failures}}
}

func hasNode(m *nodemap.Map, id string) bool {
	_, ok := m.Node(id)
	return ok
}

// expectNodeKey carries, in a request's context, the node id the peer
// client's handshake must find in the server's certificate.
type expectNodeKey struct{}

// peerFillPeers are the cache's peers: the alive, verified nodes of the
// map that have an address, reached at that address (which their
// certificate names, or they would not be verified) and this node's peer
// port, the same on every clone.
func peerFillPeers(pt *peerTLS, nodes nodemap.Source, port string) nodePeers {
	base := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pt.cert},
		RootCAs:      pt.roots,
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		// The chain and the address are verified as for any HTTPS server
		// (the certificate names the IP dialed); VerifyConnection also
		// checks that it is the node asked for.
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			expect, _ := ctx.Value(expectNodeKey{}).(string)
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			cfg := base.Clone()
			cfg.ServerName = host
			cfg.VerifyConnection = func(cs tls.ConnectionState) error {
				id, err := pki.NodeIDFromCert(cs.PeerCertificates[0])
				if err != nil {
					return err
				}
				if id != expect {
					return fmt.Errorf("asked node %q at %s, but its certificate names %q", expect, addr, id)
				}
				return nil
			}
			return (&tls.Dialer{NetDialer: dialer, Config: cfg}).DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	addrOf := func(nd *nodemap.Node) (netip.Addr, bool) {
		if nd.IPv4.IsValid() {
			return nd.IPv4, true
		}
		return nd.IPv6, nd.IPv6.IsValid()
	}
	return nodePeers{&cdn.HTTPPeers{
		List: func() []cdn.PeerNode {
			m, _ := nodes.Current()
			out := make([]cdn.PeerNode, 0, len(m.Nodes))
			for i := range m.Nodes {
				nd := &m.Nodes[i]
				if _, ok := addrOf(nd); ok && nd.Serving() {
					out = append(out, cdn.PeerNode{ID: nd.ID, Region: nd.Region, Self: nd.Self})
				}
			}
			return out
		},
		BaseURL: func(id string) (string, bool) {
			m, _ := nodes.Current()
			nd, ok := m.Node(id)
			if !ok {
				return "", false
			}
			a, ok := addrOf(&nd)
			if !ok {
				return "", false
			}
			return "https://" + net.JoinHostPort(a.String(), port) + peerFillPrefix, true
		},
		Client: &http.Client{Transport: tr},
	}}
}

// nodePeers is cdn.HTTPPeers with the node asked for in the request's
// context, where the client's handshake checks it.
type nodePeers struct{ *cdn.HTTPPeers }

func (p nodePeers) Get(ctx context.Context, node, key string) (*http.Response, error) {
	return p.HTTPPeers.Get(context.WithValue(ctx, expectNodeKey{}, node), node, key)
}
