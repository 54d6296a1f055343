package node

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/dns"
	"github.com/edgenode/edgenode/internal/mongoproxy"
	"github.com/edgenode/edgenode/internal/mongoproxy/embedded"
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
	return ps
}

// buildOptionalParts adds the parts beyond the transport and admin, in start
// order: the node map first (DNS reads it), then DNS.
func (n *Node) buildOptionalParts() error {
	n.nodes = nodemap.NewPublisher(staticNodes(&n.cfg, n.version))
	n.admin.Handle("GET /status.json", statusJSON(n.nodes, n.cfg.Node.ID, n.version))
	if n.cfg.DNS.Enabled {
		if err := n.buildDNS(n.nodes); err != nil {
			return err
		}
	}
	if n.cfg.Mongo.Enabled {
		if err := n.buildMongo(); err != nil {
			return err
		}
	}
	return nil
}

// buildMongo adds the local database (embedded FerretDB when no upstream is
// configured) and the proxy in front of it. The proxy is built at start,
// once the embedded database's address is known.
func (n *Node) buildMongo() error {
	c := n.cfg.Mongo
	upstream, err := c.Upstream.Resolve()
	if err != nil {
		return fmt.Errorf("mongo.upstream: %w", err)
	}
	if upstream == "" {
		var db *embedded.Server
		dir := filepath.Join(n.cfg.Node.DataDir, "mongo")
		n.parts = append(n.parts, &part{
			name:   "mongo-db",
			detail: "embedded FerretDB (SQLite) in " + dir,
			start: func(ctx context.Context) error {
				if err := os.MkdirAll(dir, 0o750); err != nil {
					return err
				}
				var err error
				db, err = embedded.Start(ctx, dir, n.log.With("part", "ferretdb"))
				if err != nil {
					return err
				}
				upstream = db.URI()
				return nil
			},
			stop: func(context.Context) error {
				if db != nil {
					db.Stop()
				}
				return nil
			},
		})
	}
	var proxy *mongoproxy.Proxy
	n.parts = append(n.parts, &part{
		name:   "mongo",
		detail: "Mongo wire-protocol proxy on " + c.Listen + " (multi-master capture of writes)",
		start: func(ctx context.Context) error {
			var err error
			proxy, err = mongoproxy.New(mongoproxy.Options{
				Listen:    c.Listen,
				Upstream:  upstream,
				NodeID:    n.cfg.Node.ID,
				DataDir:   n.cfg.Node.DataDir,
				Replicate: c.Replicate,
				LocalOnly: c.LocalOnly,
				MaxConns:  c.MaxConns,
			}, n.log.With("part", "mongo"), n.reg)
			if err != nil {
				return err
			}
			return proxy.Start(ctx)
		},
		// A stop, not a drain: the app server's in-flight requests may still
		// need the database while the HTTPS side drains.
		stop: func(ctx context.Context) error {
			if proxy == nil {
				return nil
			}
			return proxy.Shutdown(ctx)
		},
	})
	return nil
}

func (n *Node) buildDNS(src nodemap.Source) error {
	opts, err := dnsOptions(&n.cfg.DNS)
	if err != nil {
		return err
	}
	srv, err := dns.New(opts, src, n.log.With("part", "dns"), n.reg)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	n.parts = append(n.parts, &part{
		name:   "dns",
		detail: "authoritative GeoIP DNS on udp+tcp " + n.cfg.DNS.Listen + " for " + zoneNames(n.cfg.DNS.Zones),
		start:  srv.Start,
		stop:   srv.Shutdown,
		reload: srv.Reload,
	})
	return nil
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
		SlackKM:   c.SlackKM,
		RRL: dns.RRLOptions{
			Enabled:            c.RRL.Enabled,
			ResponsesPerSecond: c.RRL.ResponsesPerSec,
			Slip:               c.RRL.Slip,
			Loopback:           !c.RRL.ExemptLoopback,
		},
	}
	if c.SlackKM == 0 {
		o.SlackKM = -1 // the config's 0 means "no slack"; the package's 0 means "default"
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
