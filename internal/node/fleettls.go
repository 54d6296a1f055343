package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	fleet "github.com/edgenode/edgenode/internal/certs"
	"github.com/edgenode/edgenode/internal/config"
)

// fleetTLS is what the clones share for TLS: the storage, session-ticket
// keys (always; so a client resumes on any node) and, when enabled, ACME
// certificates that only the cron_leader orders.
type fleetTLS struct {
	kv    fleet.KV
	where string // for people: "the replicated collection ..." or "the folder ..."
	// storage starts and stops the storage: first in, last out of the
	// fleet parts.
	storage *part
	acme    *fleet.Manager // nil without https.acme
}

// buildFleetTLS builds the storage and the ACME manager (the transport
// needs it for certificates and TLS-ALPN challenges). Its parts are added
// by addFleetTLSParts, after the Mongo part: with https.fleet_storage
// "mongo" (the default with Mongo on) the storage is the replicated
// collection config.FleetNamespace, read and written through this node's
// own proxy, so certificates, keys and the ACME account replicate to every
// clone and survive a restart of the whole fleet.
func (n *Node) buildFleetTLS() (*fleetTLS, error) {
	f := &fleetTLS{}
	store := n.cfg.FleetStore()
	log := n.log.With("part", "fleet-tls")
	if store == config.FleetStorageMongo {
		kv := fleet.NewMongoKV(time.Second, log) // a find of a small collection: cheap, and on-demand names wait on it
		f.kv = kv
		f.where = "the replicated collection " + config.FleetNamespace
		var client *mongo.Client
		f.storage = &part{
			name:   "fleet-storage",
			detail: "TLS material shared by the fleet in " + f.where,
			start: func(context.Context) error {
				opts, err := n.fleetMongoOptions()
				if err != nil {
					return err
				}
				if client, err = mongo.Connect(opts); err != nil {
					return fmt.Errorf("fleet storage: %w", err)
				}
				db, coll, _ := strings.Cut(config.FleetNamespace, ".")
				kv.Start(client.Database(db).Collection(coll))
				return nil
			},
			stop: func(ctx context.Context) error {
				err := kv.Close()
				if client != nil {
					err = errors.Join(err, client.Disconnect(ctx))
				}
				return err
			},
		}
	} else {
		kv, err := fleet.NewFileKV(store, 2*time.Second, log)
		if err != nil {
			return nil, fmt.Errorf("https.fleet_storage: %w", err)
		}
		f.kv = kv
		f.where = "the folder " + store
		f.storage = &part{
			name:   "fleet-storage",
			detail: "TLS material shared by the fleet in " + f.where,
			stop:   func(context.Context) error { return kv.Close() },
		}
	}
	h := n.cfg.HTTPS
	if !h.ACME.Enabled {
		return f, nil
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
	mgr, err := fleet.New(opts, f.kv, log, n.reg)
	if err != nil {
		return nil, fmt.Errorf("https.acme: %w", err)
	}
	f.acme = mgr
	return f, nil
}

// fleetMongoOptions reaches this node's proxy (never the database behind
// it: writes must be captured to replicate). When the database needs
// credentials the proxy refuses captured writes from unauthenticated
// clients, so the upstream URI's credentials are used.
func (n *Node) fleetMongoOptions() (*options.ClientOptions, error) {
	opts := options.Client().
		ApplyURI("mongodb://" + dialable(n.cfg.Mongo.Listen) + "/?directConnection=true").
		SetAppName("edgenode-fleet-tls").
		SetTimeout(10 * time.Second)
	upstream, err := n.cfg.Mongo.Upstream.Resolve()
	if err != nil {
		return nil, fmt.Errorf("mongo.upstream: %w", err)
	}
	if upstream != "" {
		up := options.Client().ApplyURI(upstream)
		if err := up.Validate(); err != nil {
			return nil, fmt.Errorf("mongo.upstream: %w", err)
		}
		if up.Auth != nil {
			opts.SetAuth(*up.Auth)
		}
	}
	return opts, nil
}

// addFleetTLSParts adds the storage, ticket keys and ACME parts. They come
// after the Mongo part (the storage may live there) and so after HTTPS
// started serving: until they run, a node uses its own ticket keys and its
// file or self-signed certificates. They stop after HTTPS has drained.
func (n *Node) addFleetTLSParts(f *fleetTLS) {
	leader := leaderNote(n.cfg.Node.CronLeader)
	n.parts = append(n.parts, f.storage)
	tk := fleet.NewTicketKeys(fleet.TicketOptions{Leader: n.cfg.Node.CronLeader, Period: n.cfg.HTTPS.SessionTickets.Rotation},
		f.kv, n.https.SetSessionTicketKeys, n.log.With("part", "fleet-tls"), n.reg)
	n.parts = append(n.parts, &part{
		name:   "session-tickets",
		detail: "TLS session-ticket keys shared through " + f.where + leader,
		start:  tk.Start,
		stop:   func(context.Context) error { tk.Stop(); return nil },
	})
	if f.acme == nil {
		return
	}
	a := n.cfg.HTTPS.ACME
	n.parts = append(n.parts, &part{
		name:   "acme",
		detail: fmt.Sprintf("ACME certificates for %v from %s%s", a.Names, a.CA, leader),
		start:  f.acme.Start,
		stop:   func(context.Context) error { f.acme.Stop(); return nil },
	})
}

func leaderNote(leader bool) string {
	if leader {
		return " (this node is the cron_leader: it orders and rotates)"
	}
	return " (the cron_leader orders and rotates)"
}
