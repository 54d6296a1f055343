package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	fleet "github.com/edgenode/edgenode/internal/certs"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/mongoproxy"
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
		secret, err := n.fleetSecret(log)
		if err != nil {
			return nil, err
		}
		kv, err := fleet.NewMongoKV(secret, time.Second, log) // a find of a small collection: cheap, and on-demand names wait on it
		if err != nil {
			return nil, fmt.Errorf("https.fleet_secret: %w", err)
		}
		f.kv = kv
		f.where = "the replicated collection " + config.FleetNamespace
		var client *mongo.Client
		f.storage = &part{
			name:   "fleet-storage",
			detail: "TLS material shared by the fleet in " + f.where + ", encrypted with the fleet secret",
			start: func(context.Context) error {
				if n.mongoProxy == nil {
					return errors.New("fleet storage: the Mongo proxy is not running")
				}
				opts, err := n.fleetMongoOptions(n.mongoProxy)
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
	mgr, err := fleet.New(acmeOptions(&n.cfg), f.kv, log, n.reg)
	if err != nil {
		return nil, fmt.Errorf("https.acme: %w", err)
	}
	f.acme = mgr
	return f, nil
}

// acmeOptions translates https.acme. Its challenge_port 0 means the port of
// https.listen (the package's 0 means 443); its other keys are never 0.
func acmeOptions(cfg *config.Config) fleet.Options {
	h := cfg.HTTPS
	a := h.ACME
	host, portStr, _ := net.SplitHostPort(h.Listen)
	port, _ := strconv.Atoi(portStr)
	if a.ChallengePort != 0 {
		port = a.ChallengePort
	}
	opts := fleet.Options{
		Leader: cfg.Node.CronLeader, NodeID: cfg.Node.ID, CA: a.CA, Email: a.Email, Names: a.Names,
		MaxOnDemandNames: a.OnDemand.MaxNames, OnDemandWait: a.OnDemand.Wait,
		ChallengeHost: host, ChallengePort: port, RenewCheckInterval: a.RenewCheckInterval,
	}
	if a.OnDemand.Ask != "" {
		opts.Ask = &fleet.AskOptions{URL: a.OnDemand.Ask, PerClient: a.OnDemand.PerClient, Global: a.OnDemand.Global, Window: a.OnDemand.Window}
	}
	return opts
}

// fleetMongoOptions reaches this node's proxy (never the database behind
// it: writes must be captured to replicate) through its in-process
// connection, never its listener: only that connection may enter the
// reserved namespace that holds the fleet's secrets, and no other process
// can open one. When the database needs credentials the proxy refuses
// captured writes from unauthenticated clients, so the upstream URI's
// credentials are used.
func (n *Node) fleetMongoOptions(proxy *mongoproxy.Proxy) (*options.ClientOptions, error) {
	opts := options.Client().
		// The host names nothing: the dialer ignores it.
		ApplyURI("mongodb://edgenode-internal/?directConnection=true").
		SetDialer(dialerFunc(proxy.DialInternal)).
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

// dialerFunc makes a function the mongo driver's dialer
// (options.ContextDialer).
type dialerFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialerFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}

// fleetSecretFile is where a node without a mesh keeps the fleet secret it
// made itself, in node.data_dir.
const fleetSecretFile = "fleet.secret"

// fleetSecret is https.fleet_secret, or, when it is empty on a node
// without a mesh, the secret this node made once in its data folder (see
// ensureFleetSecret). Config validation requires it with a mesh: clones
// that made their own could not read each other's material.
func (n *Node) fleetSecret(log *slog.Logger) ([]byte, error) {
	if s := n.cfg.HTTPS.FleetSecret; !s.IsZero() {
		v, err := s.Resolve()
		if err != nil {
			return nil, fmt.Errorf("https.fleet_secret: %w", err)
		}
		if len(v) < config.MinFleetSecretLen {
			return nil, fmt.Errorf("https.fleet_secret: is %d characters long: want at least %d random ones", len(v), config.MinFleetSecretLen)
		}
		return []byte(v), nil
	}
	if n.cfg.Mesh.Enabled {
		return nil, errors.New("https.fleet_secret: is required with a mesh and https.fleet_storage mongo: every clone needs the same one")
	}
	path := filepath.Join(n.cfg.Node.DataDir, fleetSecretFile)
	v, made, err := ensureFleetSecret(path)
	if err != nil {
		return nil, fmt.Errorf("fleet secret (https.fleet_secret is empty): %w", err)
	}
	if made {
		log.Info("made a fleet secret for this single node: a cluster needs the same one on every node; copy it to each and set https.fleet_secret: {file: PATH}",
			"path", path)
	} else {
		log.Info("fleet secret: the one this node made (https.fleet_secret is empty)", "path", path)
	}
	return v, nil
}

// ensureFleetSecret reads the secret at path, or makes it: 32 random bytes,
// base64 (so the file is also a valid https.fleet_secret {file: PATH}),
// written to a temporary file of mode 0600, synced, and linked in place
// (never over a file another process made meanwhile), then the folder
// synced, so a crash leaves either no secret or a whole one.
func ensureFleetSecret(path string) (secret []byte, made bool, err error) {
	read := func() ([]byte, error) {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		v := bytes.TrimRight(b, "\r\n")
		if len(v) < config.MinFleetSecretLen {
			return nil, fmt.Errorf("%s holds %d characters: want at least %d (remove it to make a new one, if nothing is stored with it yet)", path, len(v), config.MinFleetSecretLen)
		}
		return v, nil
	}
	v, err := read()
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return v, false, err
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw) // crypto/rand never fails on Linux
	text := base64.StdEncoding.EncodeToString(raw) + "\n"
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".fleet.secret-*") // mode 0600
	if err != nil {
		return nil, false, err
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(text)
	if err := errors.Join(werr, tmp.Sync(), tmp.Close()); err != nil {
		return nil, false, fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			v, err := read()
			return v, false, err
		}
		return nil, false, err
	}
	d, err := os.Open(dir)
	if err != nil {
		return nil, false, err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, false, fmt.Errorf("sync %s: %w", dir, err)
	}
	return []byte(strings.TrimRight(text, "\n")), true, nil
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
