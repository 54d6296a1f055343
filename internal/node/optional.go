package node

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/cdn"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/dns"
	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/mongoproxy/repl"
	"github.com/edgenode/edgenode/internal/nodemap"
)

// probes lists the addresses of parts that bind their own sockets.
func (n *Node) probes() []probeAddr {
	var ps []probeAddr
	if n.cfg.DNS.Enabled {
		ps = append(ps, probeAddr{"dns.listen", "udp", n.cfg.DNS.Listen}, probeAddr{"dns.listen", "tcp", n.cfg.DNS.Listen})
	}
	if n.cfg.Mongo.Enabled {
		ps = append(ps, probeAddr{"mongo.listen", "tcp", n.cfg.Mongo.Listen})
	}
	if n.cfg.Mesh.Enabled {
		ps = append(ps, probeAddr{"mesh.bind", "udp", n.cfg.Mesh.Bind}, probeAddr{"mesh.bind", "tcp", n.cfg.Mesh.Bind},
			probeAddr{"mesh.link_listen", "udp", n.cfg.Mesh.LinkListen})
	}
	if n.cfg.PeerFillActive() {
		ps = append(ps, probeAddr{"cdn.peer_fill.listen", "tcp", n.cfg.CDN.PeerFill.Listen})
	}
	return ps
}

// purgeTopic carries cache purges to every peer.
const purgeTopic = "cdn-purge"

// cdnPart is the media cache: routes on the public listener, purge on the
// admin listener, purges fanned out through the mesh.
type cdnPart struct {
	cache    *cdn.Cache
	detail   string
	maxBytes prometheus.Gauge // edgenode_cdn_max_bytes, set by reloads
}

func (p *cdnPart) Name() string                { return "cdn" }
func (p *cdnPart) Detail() string              { return p.detail }
func (p *cdnPart) Start(context.Context) error { return nil }

// Stop closes the cache; HTTPS, which serves its routes, has drained.
func (p *cdnPart) Stop(context.Context) error { return p.cache.Close() }

// buildCDN builds the cache and, when peer fill runs (see
// config.PeerFillActive), its peer listener.
func (n *Node) buildCDN(mp *meshPart) (*cdnPart, *peerFillPart, error) {
	c := n.cfg.CDN
	var origin cdn.Origin
	var originDesc string
	if c.Origin.S3.Bucket != "" || len(c.Origin.S3.Buckets) > 0 {
		s := c.Origin.S3
		keyID, err := s.AccessKeyID.Resolve()
		if err != nil {
			return nil, nil, fmt.Errorf("cdn.origin.s3.access_key_id: %w", err)
		}
		secret, err := s.SecretAccessKey.Resolve()
		if err != nil {
			return nil, nil, fmt.Errorf("cdn.origin.s3.secret_access_key: %w", err)
		}
		o, err := cdn.NewS3Origin(context.Background(), cdn.S3Options{
			Bucket: s.Bucket, Buckets: s.Buckets, KeyPrefix: s.KeyPrefix, Region: s.Region,
			Endpoint: s.Endpoint, PathStyle: s.PathStyle, AccessKeyID: keyID, SecretAccessKey: secret, Profile: s.Profile,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("cdn.origin.s3: %w", err)
		}
		origin, originDesc = o, "S3 "+s.Endpoint+" bucket "+s.Bucket
	} else {
		dir := c.Origin.Dir
		if dir == "" {
			dir = filepath.Join(n.cfg.Node.DataDir, "origin")
		}
		o, err := cdn.NewDirOrigin(dir)
		if err != nil {
			return nil, nil, fmt.Errorf("cdn.origin.dir: %w", err)
		}
		origin, originDesc = o, "folder "+dir
	}
	opts := cdnOptions(&c, n.cfg.Node.DataDir, origin)
	var pt *peerTLS
	if n.cfg.PeerFillActive() && mp != nil {
		var err error
		if pt, err = n.loadPeerTLS(); err != nil {
			return nil, nil, err
		}
		_, port, _ := net.SplitHostPort(c.PeerFill.Listen)
		opts.Peer = cdn.PeerOptions{
			Peers:     peerFillPeers(pt, mp.m, port),
			FirstByte: c.PeerFill.FirstByteTimeout,
			// The origin is S3: a single-part ETag is the object's MD5,
			// which checks a copy the owner is still filling.
			ETagIsMD5: true,
		}
	}
	cache, err := cdn.New(opts, n.log.With("part", "cdn"), n.reg)
	if err != nil {
		return nil, nil, fmt.Errorf("cdn: %w", err)
	}
	for pattern, h := range cache.Routes() {
		n.https.Handle(pattern, h)
	}
	for pattern, h := range cache.AdminRoutes() {
		n.admin.Handle(pattern, h)
	}
	if mp != nil {
		m, log := mp.m, n.log
		cache.OnPurge(func(_ context.Context, key string, _ time.Time) error {
			m.Broadcast(purgeTopic, []byte(key)) // at once, to the nodes that are up
			return nil
		})
		m.Handle(purgeTopic, func(from string, msg []byte) {
			if err := cache.Purge(string(msg)); err != nil {
				log.Warn("purge from peer", "peer", from, "err", err)
			}
		})
	}
	var peer *peerFillPart
	if pt != nil {
		peer = n.buildPeerFill(cache, pt, mp.m)
		originDesc += ", peers first"
	} else if c.PeerFill.Enabled {
		n.log.Info("cdn peer fill is off: it needs mesh.enabled and an S3 origin", "mesh", n.cfg.Mesh.Enabled, "origin", originDesc)
	}
	return &cdnPart{cache: cache, detail: "media cache at " + c.Prefix + " from " + originDesc, maxBytes: n.cdnMax}, peer, nil
}

// cdnOptions translates the cdn section; see none for its zeros.
func cdnOptions(c *config.CDN, dataDir string, origin cdn.Origin) cdn.Options {
	return cdn.Options{
		Dir:                  filepath.Join(dataDir, "cache"),
		MaxBytes:             int64(c.MaxBytes),
		MaxEntries:           c.MaxEntries,
		Prefix:               c.Prefix,
		Origin:               origin,
		MaxObjectBytes:       int64(c.MaxObjectBytes),
		CacheControl:         c.CacheControl,
		TTL:                  c.TTL,
		StaleWhileRevalidate: none(c.StaleWhileRevalidate),
		NegativeTTL:          none(c.NegativeTTL),
		OriginTimeout:        c.OriginTimeout,
		MemoryBytes:          none(int64(c.MemoryBytes)),
		MemoryMaxObjectBytes: int64(c.MemoryMaxObjectBytes),
	}
}

// meshPart is membership and peer links. It announces draining before any
// part drains, so DNS everywhere stops naming this node while it drains,
// and leaves the cluster once every other part has stopped.
type meshPart struct {
	m      *mesh.Mesh
	detail string
	log    *slog.Logger
}

func (p *meshPart) Name() string   { return "mesh" }
func (p *meshPart) Detail() string { return p.detail }

// Start binds the mesh's sockets. The mesh lives until Stop: ending the
// context mesh.Start is given would stop it without a leave message.
func (p *meshPart) Start(ctx context.Context) error {
	return p.m.Start(context.WithoutCancel(ctx))
}

func (p *meshPart) Announce(ctx context.Context) error { return p.m.Drain(ctx) }
func (p *meshPart) Stop(ctx context.Context) error     { return p.m.Leave(ctx) }

func (n *Node) buildMesh() (*meshPart, error) {
	c := n.cfg.Mesh
	keys, err := gossipKeys(c.GossipKeys)
	if err != nil {
		return nil, err
	}
	self := selfNode(&n.cfg, n.version)
	tags := slices.Clone(n.cfg.Node.Tags)
	if n.cfg.Node.CronLeader {
		// Peers check from the node map that exactly one node claims it.
		tags = append(tags, repl.CronLeaderTag)
	}
	proto, err := testMeshProtocol(n.log)
	if err != nil {
		return nil, err
	}
	m, err := mesh.New(mesh.Options{
		NodeID: n.cfg.Node.ID, Region: n.cfg.Node.Region, Lat: n.cfg.Node.Latitude, Lon: n.cfg.Node.Longitude,
		PublicIPv4: self.IPv4, PublicIPv6: self.IPv6, Tags: tags,
		BinaryVersion: n.version, ConfigVersion: n.cfgVersion,
		BindAddr: c.Bind, AdvertiseAddr: c.Advertise, LinkAddr: c.LinkListen, Seeds: c.Seeds,
		GossipKeys: keys, CACertFile: c.CACert, CertFile: c.Cert, KeyFile: c.KeyFile,
		Profile: c.Profile, QueueLen: c.QueueLength, Protocol: proto,
	}, n.log.With("part", "mesh"), n.reg)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	return &meshPart{m: m, log: n.log.With("part", "mesh"), detail: "gossip on " + c.Bind + ", mTLS QUIC peer links on " + c.LinkListen}, nil
}

// testMeshProtocolEnv names the environment variable with which tests make
// a node speak another mesh protocol version than its own (mesh.Protocol),
// to play a node of another release: see cmd/edgenode's mixed-version
// test. It is not a config key because no operator should ever set it.
const testMeshProtocolEnv = "EDGENODE_TEST_MESH_PROTOCOL"

// testMeshProtocol reads testMeshProtocolEnv: 0 when unset.
func testMeshProtocol(log *slog.Logger) (int, error) {
	v := os.Getenv(testMeshProtocolEnv)
	if v == "" {
		return 0, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil || p < 1 {
		return 0, fmt.Errorf("%s=%q: want a mesh protocol version (a number from 1)", testMeshProtocolEnv, v)
	}
	log.Warn("this node plays another mesh protocol version (a test setting)", "env", testMeshProtocolEnv, "protocol", p, "own_protocol", mesh.Protocol)
	return p, nil
}

// dnsPart is the authoritative GeoIP DNS server.
type dnsPart struct {
	srv    *dns.Server
	detail string
}

func (p *dnsPart) Name() string                    { return "dns" }
func (p *dnsPart) Detail() string                  { return p.detail }
func (p *dnsPart) Start(ctx context.Context) error { return p.srv.Start(ctx) }
func (p *dnsPart) Stop(ctx context.Context) error  { return p.srv.Shutdown(ctx) }
func (p *dnsPart) Reload() error                   { return p.srv.Reload() }

func (n *Node) buildDNS(src nodemap.Source, rp *rumPart) (*dnsPart, error) {
	opts, err := dnsOptions(&n.cfg.DNS)
	if err != nil {
		return nil, err
	}
	if rp != nil {
		opts.Measured = rp.table
	}
	srv, err := dns.New(opts, src, n.log.With("part", "dns"), n.reg)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	return &dnsPart{srv: srv, detail: "authoritative GeoIP DNS on udp+tcp " + n.cfg.DNS.Listen + " for " + zoneNames(n.cfg.DNS.Zones)}, nil
}

func zoneNames(zs []config.Zone) string {
	var names []string
	for _, z := range zs {
		names = append(names, z.Origin)
	}
	return strings.Join(names, ", ")
}

func dnsOptions(c *config.DNS) (dns.Options, error) {
	o := dns.Options{
		Listen:    c.Listen,
		GeoIPPath: c.GeoIP,
		SlackKM:   none(c.SlackKM),
		RRL: dns.RRLOptions{
			Enabled:            c.RRL.Enabled,
			ResponsesPerSecond: c.RRL.ResponsesPerSec,
			Slip:               none(c.RRL.Slip),
			Loopback:           !c.RRL.ExemptLoopback,
		},
		MaxTCPConnsPerIP: none(c.TCPMaxConnsPerIP),
	}
	for _, z := range c.Zones {
		dz := dns.Zone{
			Origin: z.Origin,
			NS:     z.NS,
			SOA: dns.SOA{
				MName:   firstOr(z.NS, ""),
				RName:   z.Mbox,
				Minimum: z.NegativeTTL,
				TTL:     z.TTL,
			},
			NSTTL: z.TTL,
		}
		for _, r := range z.Records {
			dz.Records = append(dz.Records, dns.Record{Name: r.Name, Type: strings.ToUpper(r.Type), TTL: r.TTL, Value: r.Value})
		}
		o.Zones = append(o.Zones, dz)
	}
	for _, d := range c.Dynamic {
		o.Dynamic = append(o.Dynamic, dns.DynamicName{Name: d.Name, Tag: d.Tag, K: d.Count, TTL: d.TTL})
	}
	for _, ov := range c.Overrides {
		p, err := netip.ParsePrefix(ov.CIDR)
		if err != nil {
			return o, fmt.Errorf("dns.overrides: %w", err)
		}
		do := dns.Override{Prefix: p.Masked(), Country: ov.Country, Continent: ov.Continent}
		if ov.Latitude != nil && ov.Longitude != nil {
			do.Lat, do.Lon, do.HasCoords = *ov.Latitude, *ov.Longitude, true
		}
		o.Overrides = append(o.Overrides, do)
	}
	return o, nil
}

func firstOr(s []string, def string) string {
	if len(s) > 0 {
		return s[0]
	}
	return def
}
