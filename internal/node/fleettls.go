package node

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	fleet "github.com/edgenode/edgenode/internal/certs"
	"github.com/edgenode/edgenode/internal/transport"
)

// buildFleetTLS sets up what the clones share for TLS: session-ticket keys
// (always; so a client resumes on any node) and, when enabled, ACME
// certificates that only the cron_leader orders. Both live in the fleet
// storage folder. It returns parts to add once the transport exists (they
// need its SetSessionTicketKeys) and the ACME certificate source, if any.
//
// The storage is a folder (certs.FileKV): on one machine, or on a folder the
// operator replicates; a KV over the replicated Mongo layer is the intended
// cluster-wide store (see the issue note).
func (n *Node) buildFleetTLS() ([]func(*transport.Server) *part, transport.CertificateGetter, error) {
	h := n.cfg.HTTPS
	dir := h.FleetStorage
	if dir == "" {
		dir = filepath.Join(n.cfg.Node.DataDir, "fleet-tls")
	}
	log := n.log.With("part", "fleet-tls")
	kv, err := fleet.NewFileKV(dir, 2*time.Second, log)
	if err != nil {
		return nil, nil, fmt.Errorf("https.fleet_storage: %w", err)
	}
	var parts []func(*transport.Server) *part
	parts = append(parts, func(srv *transport.Server) *part {
		tk := fleet.NewTicketKeys(fleet.TicketOptions{Leader: n.cfg.Node.CronLeader, Period: h.SessionTickets.Rotation},
			kv, srv.SetSessionTicketKeys, log, n.reg)
		return &part{
			name:   "session-tickets",
			detail: "TLS session-ticket keys shared through " + dir + leaderNote(n.cfg.Node.CronLeader),
			start:  tk.Start,
			stop: func(context.Context) error {
				tk.Stop()
				return kv.Close()
			},
		}
	})
	if !h.ACME.Enabled {
		return parts, nil, nil
	}
	a := h.ACME
	host, portStr, _ := net.SplitHostPort(h.Listen)
	port, _ := strconv.Atoi(portStr)
	if a.ChallengePort != 0 {
		port = a.ChallengePort
	}
	opts := fleet.Options{
		Leader: n.cfg.Node.CronLeader, NodeID: n.cfg.Node.ID, CA: a.CA, Email: a.Email, Names: a.Names,
		MaxOnDemandNames: a.OnDemand.MaxNames, OnDemandWait: a.OnDemand.Wait,
		ChallengeHost: host, ChallengePort: port, RenewCheckInterval: a.RenewCheckInterval,
	}
	if a.OnDemand.Ask != "" {
		opts.Ask = &fleet.AskOptions{URL: a.OnDemand.Ask, PerClient: a.OnDemand.PerClient, Global: a.OnDemand.Global, Window: a.OnDemand.Window}
	}
	mgr, err := fleet.New(opts, kv, log, n.reg)
	if err != nil {
		return nil, nil, fmt.Errorf("https.acme: %w", err)
	}
	parts = append(parts, func(*transport.Server) *part {
		return &part{
			name:   "acme",
			detail: fmt.Sprintf("ACME certificates for %v from %s%s", a.Names, a.CA, leaderNote(n.cfg.Node.CronLeader)),
			start:  mgr.Start,
			stop:   func(context.Context) error { mgr.Stop(); return nil },
		}
	})
	return parts, mgr, nil
}

func leaderNote(leader bool) string {
	if leader {
		return " (this node is the cron_leader: it orders and rotates)"
	}
	return " (the cron_leader orders and rotates)"
}
