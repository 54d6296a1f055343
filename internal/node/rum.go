package node

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/rum"
)

// rumPart holds the real-user measurements (dns.measured): the widget's
// routes on the HTTPS listener, the per-network table DNS reads, and its
// loop, which rebuilds the preferences and shares the digest over the
// mesh.
type rumPart struct {
	table  *rum.Table
	share  func([]byte)
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (p *rumPart) Name() string { return "measured" }
func (p *rumPart) Detail() string {
	return "real-user round trips per client network (" + rum.RTTPath + ", " + rum.BeaconPath + ") steer DNS"
}

func (p *rumPart) Start(context.Context) error {
	// Its own context: the loop lives until Stop, not until Start returns.
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Go(func() { p.table.Run(ctx, p.share) })
	return nil
}

func (p *rumPart) Stop(context.Context) error {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
	return nil
}

// buildRUM builds the measurements part and registers its routes on the
// HTTPS listener; with a mesh, digests go to and come from the peers.
func (n *Node) buildRUM(nodes nodemap.Source, mp *meshPart) (*rumPart, error) {
	c := n.cfg.DNS.Measured
	t, err := rum.New(rum.Options{MinSamples: c.MinSamples, HalfLife: c.HalfLife, MaxNetworks: c.MaxNetworks},
		n.log.With("part", "measured"), n.reg)
	if err != nil {
		return nil, err
	}
	p := &rumPart{table: t}
	if mp != nil {
		m := mp.m
		m.Handle(rum.Topic, func(from string, msg []byte) {
			if err := t.Merge(from, msg); err != nil {
				n.log.Debug("measured: bad digest from a peer", "peer", from, "err", err)
			}
		})
		p.share = func(b []byte) { m.Broadcast(rum.Topic, b) }
	}
	known := func(id string) bool {
		mp, _ := nodes.Current()
		_, ok := mp.Node(id)
		return ok
	}
	n.https.Handle("GET "+rum.RTTPath, rum.RTTHandler())
	n.https.Handle("GET "+rum.ScriptPath, rum.ScriptHandler())
	n.https.Handle("POST "+rum.BeaconPath, t.BeaconHandler(known))
	n.https.Handle("GET "+rum.TargetsPath, rum.TargetsHandler(func() rum.Targets {
		return rumTargets(nodes, n.cfg.Node.ID, c.SampleRate, n.cfg.HTTPS.Listen, n.cfg.DNS.Zones)
	}))
	return p, nil
}

// rumTargets lists the serving nodes the widget may time. A node is
// reached by its per-node DNS name <id>.nodes.<zone> when a zone is
// configured (what a browser can verify a certificate for), else by its
// address; the port is this node's HTTPS port, the fleet's convention
// being one port everywhere.
func rumTargets(src nodemap.Source, self string, rate float64, listen string, zones []config.Zone) rum.Targets {
	out := rum.Targets{Self: self, SampleRate: rate, Targets: []rum.Target{}}
	_, port, _ := net.SplitHostPort(listen)
	mp, _ := src.Current()
	for i := range mp.Nodes {
		nd := &mp.Nodes[i]
		if !nd.Serving() {
			continue
		}
		var host string
		switch {
		case len(zones) > 0:
			host = strings.ToLower(nd.ID) + ".nodes." + strings.TrimSuffix(zones[0].Origin, ".")
		case nd.IPv4.IsValid():
			host = nd.IPv4.String()
		case nd.IPv6.IsValid():
			host = nd.IPv6.String()
		default:
			continue
		}
		out.Targets = append(out.Targets, rum.Target{ID: nd.ID, URL: "https://" + hostPort(host, port) + rum.RTTPath})
	}
	return out
}

func hostPort(host, port string) string {
	if port == "" || port == "443" {
		if a, err := netip.ParseAddr(host); err == nil && a.Is6() {
			return "[" + host + "]"
		}
		return host
	}
	return net.JoinHostPort(host, port)
}
