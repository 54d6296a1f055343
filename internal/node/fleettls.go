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

	"github.com/edgenode/edgenode/internal/atomicfile"
	fleet "github.com/edgenode/edgenode/internal/certs"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/mongoproxy"
)

// fleetTLS is what the clones share for TLS: the storage, session-ticket
// keys (always; so a client resumes on any node) and, when enabled, ACME
// certificates that only the cron_leader orders.
type fleetTLS struct {
	kv      kvCloser
	mongoKV *fleet.MongoKV // kv with https.fleet_storage mongo; else nil
	where   string         // for people: "the replicated collection ..." or "the folder ..."
	acme    *fleet.Manager // nil without https.acme
}

// kvCloser is a fleet store: a *fleet.MongoKV or a *fleet.FileKV.
type kvCloser interface {
	fleet.KV
	Close() error
}

// buildFleetTLS builds the storage and the ACME manager (the transport
// needs it for certificates and TLS-ALPN challenges). Their parts are
// built by newFleetStorage and buildFleetTLSParts once the Mongo part is:
// with https.fleet_storage "mongo" (the default with Mongo on) the storage
// is the replicated collection config.FleetNamespace, read and written
// through this node's own proxy, so certificates, keys and the ACME
// account replicate to every clone and survive a restart of the whole
// fleet.
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
		f.kv, f.mongoKV = kv, kv
		f.where = "the replicated collection " + config.FleetNamespace
	} else {
		kv, err := fleet.NewFileKV(store, 2*time.Second, log)
		if err != nil {
			return nil, fmt.Errorf("https.fleet_storage: %w", err)
		}
		f.kv = kv
		f.where = "the folder " + store
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
func fleetMongoOptions(cfg *config.Config, proxy *mongoproxy.Proxy) (*options.ClientOptions, error) {
	opts := options.Client().
		// The host names nothing: the dialer ignores it.
		ApplyURI("mongodb://edgenode-internal/?directConnection=true").
		SetDialer(dialerFunc(proxy.DialInternal)).
		SetAppName("edgenode-fleet-tls").
		SetTimeout(10 * time.Second)
	upstream, err := cfg.Mongo.Upstream.Resolve()
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
	if err := atomicfile.Create(path, []byte(text), 0o600); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process made it meanwhile
			v, err := read()
			return v, false, err
		}
		return nil, false, err
	}
	return []byte(strings.TrimRight(text, "\n")), true, nil
}

// fleetStorage is where the fleet keeps its TLS material: the replicated
// collection, reached through this node's Mongo proxy, or a shared folder.
type fleetStorage struct {
	kv     kvCloser
	detail string
	// With https.fleet_storage mongo:
	mongoKV *fleet.MongoKV
	mongo   *mongoPart
	cfg     *config.Config
	client  *mongo.Client // set by Start
}

func (p *fleetStorage) Name() string   { return "fleet-storage" }
func (p *fleetStorage) Detail() string { return p.detail }

// Start connects the collection's store to the proxy, which has started
// (a folder needs nothing).
func (p *fleetStorage) Start(context.Context) error {
	if p.mongo == nil {
		return nil
	}
	proxy, err := p.mongo.Proxy()
	if err != nil {
		return fmt.Errorf("fleet storage: %w", err)
	}
	opts, err := fleetMongoOptions(p.cfg, proxy)
	if err != nil {
		return err
	}
	if p.client, err = mongo.Connect(opts); err != nil {
		return fmt.Errorf("fleet storage: %w", err)
	}
	db, coll, _ := strings.Cut(config.FleetNamespace, ".")
	p.mongoKV.Start(p.client.Database(db).Collection(coll))
	return nil
}

func (p *fleetStorage) Stop(ctx context.Context) error {
	err := p.kv.Close()
	if p.client != nil {
		err = errors.Join(err, p.client.Disconnect(ctx))
	}
	return err
}

// newFleetStorage builds the storage part; mp is the Mongo part the
// collection is reached through (config validation has checked that Mongo
// is on when the storage is the collection).
func newFleetStorage(f *fleetTLS, mp *mongoPart, cfg *config.Config) (*fleetStorage, error) {
	p := &fleetStorage{kv: f.kv, detail: "TLS material shared by the fleet in " + f.where}
	if f.mongoKV == nil {
		return p, nil
	}
	if mp == nil {
		return nil, fmt.Errorf("https.fleet_storage: %q needs mongo.enabled", config.FleetStorageMongo)
	}
	p.mongoKV, p.mongo, p.cfg = f.mongoKV, mp, cfg
	p.detail += ", encrypted with the fleet secret"
	return p, nil
}

// ticketsPart shares TLS session-ticket keys through the fleet storage.
type ticketsPart struct {
	tk     *fleet.TicketKeys
	detail string
}

func (p *ticketsPart) Name() string                    { return "session-tickets" }
func (p *ticketsPart) Detail() string                  { return p.detail }
func (p *ticketsPart) Start(ctx context.Context) error { return p.tk.Start(ctx) }
func (p *ticketsPart) Stop(context.Context) error      { p.tk.Stop(); return nil }

// acmePart orders (on the cron_leader) and serves ACME certificates kept
// in the fleet storage.
type acmePart struct {
	mgr    *fleet.Manager
	detail string
}

func (p *acmePart) Name() string                    { return "acme" }
func (p *acmePart) Detail() string                  { return p.detail }
func (p *acmePart) Start(ctx context.Context) error { return p.mgr.Start(ctx) }
func (p *acmePart) Stop(context.Context) error      { p.mgr.Stop(); return nil }

// buildFleetTLSParts builds the session-ticket part and, with https.acme,
// the ACME part. Until they run a node uses its own ticket keys and its
// file or self-signed certificates.
func (n *Node) buildFleetTLSParts(f *fleetTLS) (*ticketsPart, *acmePart, error) {
	leader := leaderNote(n.cfg.Node.CronLeader)
	tk, err := fleet.NewTicketKeys(fleet.TicketOptions{Leader: n.cfg.Node.CronLeader, Period: n.cfg.HTTPS.SessionTickets.Rotation},
		f.kv, n.https.SetSessionTicketKeys, n.log.With("part", "fleet-tls"), n.reg)
	if err != nil {
		return nil, nil, err
	}
	tickets := &ticketsPart{tk: tk, detail: "TLS session-ticket keys shared through " + f.where + leader}
	if f.acme == nil {
		return tickets, nil, nil
	}
	a := n.cfg.HTTPS.ACME
	return tickets, &acmePart{mgr: f.acme, detail: fmt.Sprintf("ACME certificates for %v from %s%s", a.Names, a.CA, leader)}, nil
}

func leaderNote(leader bool) string {
	if leader {
		return " (this node is the cron_leader: it orders and rotates)"
	}
	return " (the cron_leader orders and rotates)"
}
