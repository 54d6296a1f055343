package node

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"

	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/nodemap"
)

// selfNode is this node as the config describes it. Its addresses are the
// public ones from the config, else the HTTPS listen address when that is a
// specific IP (127.0.0.1 for the embedded node).
func selfNode(cfg *config.Config, version string) nodemap.Node {
	n := nodemap.Node{
		ID:            cfg.Node.ID,
		Region:        cfg.Node.Region,
		Lat:           cfg.Node.Latitude,
		Lon:           cfg.Node.Longitude,
		Tags:          cfg.Node.Tags,
		State:         nodemap.Alive,
		Self:          true,
		BinaryVersion: version,
		Verified:      true, // the node's own config
		Ready:         true, // without a mesh, no other node to prefer
	}
	n.IPv4, _ = netip.ParseAddr(cfg.Node.PublicIPv4)
	n.IPv6, _ = netip.ParseAddr(cfg.Node.PublicIPv6)
	if !n.IPv4.IsValid() && !n.IPv6.IsValid() {
		if host, _, err := net.SplitHostPort(cfg.HTTPS.Listen); err == nil {
			if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
				if a.Is4() {
					n.IPv4 = a
				} else {
					n.IPv6 = a
				}
			}
		}
	}
	return n
}

// staticNodes is the node list without a mesh: this node plus the config's
// dns.nodes, all alive.
func staticNodes(cfg *config.Config, version, cfgVersion string) []nodemap.Node {
	self := selfNode(cfg, version)
	self.ConfigVersion = cfgVersion
	nodes := []nodemap.Node{self}
	for _, sn := range cfg.DNS.Nodes {
		if sn.ID == cfg.Node.ID {
			continue
		}
		// The operator's config vouches for these addresses.
		// Nothing says they are not ready: they count as ready.
		n := nodemap.Node{ID: sn.ID, Region: sn.Region, Lat: sn.Latitude, Lon: sn.Longitude, Tags: sn.Tags, State: nodemap.Alive,
			Verified: true, Ready: true}
		n.IPv4, _ = netip.ParseAddr(sn.IPv4)
		n.IPv6, _ = netip.ParseAddr(sn.IPv6)
		nodes = append(nodes, n)
	}
	return nodes
}

type statusMember struct {
	ID            string   `json:"id"`
	Region        string   `json:"region"`
	Latitude      float64  `json:"latitude"`
	Longitude     float64  `json:"longitude"`
	IPv4          string   `json:"ipv4,omitempty"`
	IPv6          string   `json:"ipv6,omitempty"`
	Tags          []string `json:"tags,omitempty"`
	State         string   `json:"state"`
	Load          float64  `json:"load"`
	Self          bool     `json:"self,omitempty"`
	BinaryVersion string   `json:"binary_version,omitempty"`
	ConfigVersion string   `json:"config_version,omitempty"`
	// Verified: DNS may name the node (see nodemap.Node.Verified);
	// Unverified says why not.
	Verified   bool   `json:"verified"`
	Unverified string `json:"unverified,omitempty"`
	// Ready: DNS prefers the node (see nodemap.Node.Ready); NotReady says
	// why not.
	Ready    bool   `json:"ready"`
	NotReady string `json:"not_ready,omitempty"`
}

type status struct {
	Node       string         `json:"node"`
	Version    string         `json:"version"`
	MapVersion uint64         `json:"map_version"`
	Members    []statusMember `json:"members"`
}

// statusJSON serves the node map as JSON on the admin listener.
func statusJSON(src nodemap.Source, self, version string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m, _ := src.Current()
		st := status{Node: self, Version: version, MapVersion: m.Version, Members: make([]statusMember, 0, len(m.Nodes))}
		for _, n := range m.Nodes {
			sm := statusMember{
				ID: n.ID, Region: n.Region, Latitude: n.Lat, Longitude: n.Lon, Tags: n.Tags,
				State: n.State.String(), Load: n.Load, Self: n.Self, BinaryVersion: n.BinaryVersion, ConfigVersion: n.ConfigVersion,
				Verified: n.Verified, Unverified: n.Unverified, Ready: n.Ready, NotReady: n.NotReady,
			}
			if n.IPv4.IsValid() {
				sm.IPv4 = n.IPv4.String()
			}
			if n.IPv6.IsValid() {
				sm.IPv6 = n.IPv6.String()
			}
			st.Members = append(st.Members, sm)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	})
}
