// Package config is the one typed configuration of an edgenode process.
//
// A config is YAML. Decoding is strict: an unknown key is an error that names
// its path and, when one is close, the key that was probably meant. Every key
// has a default (Default returns them; configs/edgenode.example.yaml documents
// them key by key), so an empty file — or no file at all — is a complete
// embedded single node that needs no outside service.
//
// # Left out, and zero
//
// One rule holds for every key. A key left out takes its default: the
// loader decodes the file over Default, and over the element defaults for
// the entries of a list (a zone's ttl, a record's ttl, a dynamic name's
// count and ttl), so a Config always holds the values in effect and no
// part has a default of its own to apply. A 0 written for a limit, count,
// size, interval or timeout means "none": no limit, never, not kept, off.
// Where none cannot work (a queue, a timeout a listener needs, a budget
// the part must have) Validate rejects 0, names the key and says what to
// write instead. Ports are the exception: 0 means "the listen port" for
// https.alt_svc_port and https.acme.challenge_port, and "the kernel picks"
// in a listen address. Coordinates are never "none": 0 is a place.
//
// A package's own Options mean something else by 0 (the default, as in the
// standard library); package node translates, see its func none.
//
// A config is made of layers (see LoadLayers): the defaults, the main
// file, its drop-ins conf.d/*.yaml and EDGENODE_ environment variables, so
// that every clone of a fleet shares the main file and only a drop-in or a
// few variables say which machine it is.
//
// Secrets (keys, tokens) are of type Secret and may be given inline, as
// {file: PATH} or as {env: NAME}, so a config can be committed and shared by
// every clone while the secrets stay on each machine.
//
// Validate reports every problem at once, each with its key path, what is
// wrong and what would be right; it does not touch the file system except to
// read files the config names.
package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration. Field tags are the YAML keys.
type Config struct {
	Node   Node   `yaml:"node"`
	Log    Log    `yaml:"log"`
	HTTPS  HTTPS  `yaml:"https"`
	Admin  Admin  `yaml:"admin"`
	DNS    DNS    `yaml:"dns"`
	Mesh   Mesh   `yaml:"mesh"`
	Mongo  Mongo  `yaml:"mongo"`
	CDN    CDN    `yaml:"cdn"`
	PubSub PubSub `yaml:"pubsub"`
	Web    Web    `yaml:"web"`
}

// Web is the built-in pages.
type Web struct {
	Status         bool          `yaml:"status"`
	StatusInterval time.Duration `yaml:"status_interval"`
	Demo           Demo          `yaml:"demo"`
}

// Demo is the demo comment app (never in production).
type Demo struct {
	Enabled  bool   `yaml:"enabled"`
	Database string `yaml:"database"`
	Tenant   string `yaml:"tenant"`
}

// PubSub is live channels for browsers (websocket and SSE).
type PubSub struct {
	Enabled         bool          `yaml:"enabled"`
	Tenants         []Tenant      `yaml:"tenants"`
	History         int           `yaml:"history"`
	HistoryTTL      time.Duration `yaml:"history_ttl"`
	MaxMessageBytes int           `yaml:"max_message_bytes"`
	MaxSubsPerConn  int           `yaml:"max_subscriptions_per_conn"`
	MaxConnsPerIP   int           `yaml:"max_conns_per_ip"`
	QueueLen        int           `yaml:"queue_length"`
	PingInterval    time.Duration `yaml:"ping_interval"`

	// MaxChannels caps the channels the node keeps, MaxChannelsPerTenant
	// those of one tenant; idle ones make room, oldest first.
	MaxChannels          int `yaml:"max_channels"`
	MaxChannelsPerTenant int `yaml:"max_channels_per_tenant"`
	// SubscribeRate (per second) and SubscribeBurst bound the subscribe
	// and unsubscribe frames of one websocket (a token bucket).
	SubscribeRate  float64 `yaml:"subscribe_rate"`
	SubscribeBurst int     `yaml:"subscribe_burst"`
}

// Tenant owns the channels {tenant}/{thread}.
type Tenant struct {
	Name string `yaml:"name"`
	// Secret signs HS256 tokens for private channels; PublicKey (base64
	// Ed25519) verifies EdDSA tokens instead. Either may be empty.
	Secret    Secret   `yaml:"secret"`
	PublicKey string   `yaml:"public_key"`
	Origins   []string `yaml:"origins"` // allowed Origin headers; empty: any
	Public    []string `yaml:"public"`  // thread patterns anyone may subscribe to ("*": all)
}

// Node describes this node and its lifecycle.
type Node struct {
	ID           string        `yaml:"id"`
	Region       string        `yaml:"region"`
	Latitude     float64       `yaml:"latitude"`
	Longitude    float64       `yaml:"longitude"`
	PublicIPv4   string        `yaml:"public_ipv4"`
	PublicIPv6   string        `yaml:"public_ipv6"`
	Tags         []string      `yaml:"tags"`
	DataDir      string        `yaml:"data_dir"`
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	CronLeader   bool          `yaml:"cron_leader"`
}

// Log configures log/slog output on stderr.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// HTTPS is the public TLS listener.
type HTTPS struct {
	Listen       string        `yaml:"listen"`
	Certificates []Certificate `yaml:"certificates"`
	// CertCheckInterval is how often certificate files are checked for changes.
	CertCheckInterval time.Duration `yaml:"cert_check_interval"`
	// AppServer is the URL of the product's application server; requests no
	// part claims go there. Empty serves the built-in landing page instead.
	AppServer string `yaml:"app_server"`
	Limits    Limits `yaml:"limits"`
	// HTTP3 serves HTTP/3 on UDP at the same address as Listen.
	HTTP3      bool `yaml:"http3"`
	AltSvcPort int  `yaml:"alt_svc_port"`
	// HTTP2Server is which server speaks HTTP/2: "edgenode" (internal/h2,
	// the default) or "net/http" (Go's own, the way back should ours
	// misbehave). Empty means "edgenode".
	HTTP2Server    string         `yaml:"http2_server"`
	SessionTickets SessionTickets `yaml:"session_tickets"`
	ACME           ACME           `yaml:"acme"`
	// FleetStorage is where the fleet keeps ACME certificates and
	// session-ticket keys: "mongo" (the replicated collection
	// FleetNamespace, through this node's Mongo proxy) or a folder the
	// clones share. Empty: "mongo" when mongo.enabled, else
	// DATA_DIR/fleet-tls. See FleetStore.
	FleetStorage string `yaml:"fleet_storage"`
	// FleetSecret encrypts what the fleet keeps in the replicated
	// collection (private keys, the ACME account, ticket keys), so the
	// database holds none of it in the clear. Every clone must have the
	// same one; a node without a mesh makes its own once in
	// DATA_DIR/fleet.secret when it is empty.
	FleetSecret Secret `yaml:"fleet_secret"`
}

// The values of https.http2_server.
const (
	HTTP2Edgenode = "edgenode"
	HTTP2NetHTTP  = "net/http"
)

// MinFleetSecretLen is the shortest https.fleet_secret accepted, in
// characters: the secret is a key, and should be random.
const MinFleetSecretLen = 32

// FleetStorageMongo, as https.fleet_storage, keeps the fleet's TLS material
// in the replicated Mongo layer.
const FleetStorageMongo = "mongo"

// FleetNamespace is the collection that holds the fleet's TLS material
// with https.fleet_storage "mongo". It always replicates.
const FleetNamespace = "edgenode_fleet.tls"

// FleetStore resolves https.fleet_storage: FleetStorageMongo or a folder.
func (c *Config) FleetStore() string {
	switch {
	case c.HTTPS.FleetStorage != "":
		return c.HTTPS.FleetStorage
	case c.Mongo.Enabled:
		return FleetStorageMongo
	default:
		return filepath.Join(c.Node.DataDir, "fleet-tls")
	}
}

// SessionTickets are TLS session-ticket keys shared by the cluster.
type SessionTickets struct {
	Rotation time.Duration `yaml:"rotation"`
}

// ACME is automatic certificates for the fleet: only node.cron_leader orders.
type ACME struct {
	Enabled            bool          `yaml:"enabled"`
	CA                 string        `yaml:"ca"`
	Email              string        `yaml:"email"`
	Names              []string      `yaml:"names"`
	ChallengePort      int           `yaml:"challenge_port"`
	RenewCheckInterval time.Duration `yaml:"renew_check_interval"`
	OnDemand           OnDemand      `yaml:"on_demand"`
}

// OnDemand issues certificates for names the app server approves at handshake time.
type OnDemand struct {
	Ask       string        `yaml:"ask"`
	PerClient int           `yaml:"per_client"`
	Global    int           `yaml:"global"`
	Window    time.Duration `yaml:"window"`
	MaxNames  int           `yaml:"max_names"`
	Wait      time.Duration `yaml:"wait"`
}

// Certificate is one certificate chain and its private key, in PEM. The key
// is a file (key_file) or a secret (key: inline PEM, {file: PATH} or {env: NAME}).
type Certificate struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	Key      Secret `yaml:"key"`
}

// Limits protect the public listener from clients that are slow, greedy or both.
type Limits struct {
	MaxHeaderBytes    ByteSize      `yaml:"max_header_bytes"`
	MaxBodyBytes      ByteSize      `yaml:"max_body_bytes"`
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	IdleTimeout       time.Duration `yaml:"idle_timeout"`
	MaxConnsPerIP     int           `yaml:"max_conns_per_ip"`

	// MaxWebsocketMessageBytes bounds one message of a websocket relayed to
	// the app server, either way.
	MaxWebsocketMessageBytes ByteSize `yaml:"max_websocket_message_bytes"`
}

// Admin is the operators' listener: health, metrics, profiling, publish API.
type Admin struct {
	Listen string `yaml:"listen"`
	// Token, when set, is required as a bearer token on /v1/ endpoints.
	Token Secret `yaml:"token"`
}

// DNS is the authoritative GeoIP DNS server.
type DNS struct {
	Enabled   bool          `yaml:"enabled"`
	Listen    string        `yaml:"listen"`
	GeoIP     string        `yaml:"geoip_database"`
	SlackKM   float64       `yaml:"slack_km"`
	Zones     []Zone        `yaml:"zones"`
	Dynamic   []DynamicName `yaml:"dynamic"`
	Overrides []GeoOverride `yaml:"overrides"`
	Nodes     []StaticNode  `yaml:"nodes"`
	RRL       RRL           `yaml:"rate_limit"`
	// TCPMaxConnsPerIP bounds TCP connections per client address (IPv6:
	// per /64); 0 means no limit.
	TCPMaxConnsPerIP int `yaml:"tcp_max_conns_per_ip"`
	// Measured steers dynamic answers by round trips browsers measured
	// (package rum).
	Measured Measured `yaml:"measured"`
}

// Measured configures real-user measurements: the widget times the node
// it loaded from and one other, beacons the figures, and DNS prefers, per
// client /24 (/48), the node with the best median once enough samples
// exist.
type Measured struct {
	Enabled bool `yaml:"enabled"`
	// SampleRate is the share of page loads that measure, (0, 1].
	SampleRate float64 `yaml:"sample_rate"`
	// MinSamples is the decayed sample count a node needs in a network
	// before its median counts.
	MinSamples int `yaml:"min_samples"`
	// HalfLife is how long a sample takes to lose half its weight.
	HalfLife time.Duration `yaml:"half_life"`
	// MaxNetworks bounds the client networks kept (about 2.5 KiB each at
	// worst).
	MaxNetworks int `yaml:"max_networks"`
}

// Zone is one zone this server is authoritative for.
type Zone struct {
	Origin      string        `yaml:"origin"`
	NS          []string      `yaml:"ns"`
	Mbox        string        `yaml:"mbox"`
	TTL         time.Duration `yaml:"ttl"`
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	Records     []Record      `yaml:"records"`
}

// Record is one static record; Value is its data as in a zone file.
type Record struct {
	Name  string        `yaml:"name"` // relative to the zone ("www", "@") or absolute with the final dot
	Type  string        `yaml:"type"` // A, AAAA, CNAME, TXT, MX, CAA
	TTL   time.Duration `yaml:"ttl"`
	Value string        `yaml:"value"`
}

// DynamicName is a name answered with the nearest live nodes.
type DynamicName struct {
	Name  string        `yaml:"name"`
	Tag   string        `yaml:"tag"` // empty: every node
	Count int           `yaml:"count"`
	TTL   time.Duration `yaml:"ttl"`
}

// Element defaults: what a key left out of one entry of dns.zones,
// dns.zones[].records or dns.dynamic takes.
var (
	defaultZone        = Zone{TTL: time.Hour, NegativeTTL: time.Minute}
	defaultRecord      = Record{TTL: 5 * time.Minute}
	defaultDynamicName = DynamicName{Count: 2, TTL: 30 * time.Second}
)

// UnmarshalYAML decodes a zone over defaultZone.
func (z *Zone) UnmarshalYAML(n *yaml.Node) error {
	type plain Zone
	v := plain(defaultZone)
	if err := n.Decode(&v); err != nil {
		return err
	}
	*z = Zone(v)
	return nil
}

// UnmarshalYAML decodes a record over defaultRecord.
func (r *Record) UnmarshalYAML(n *yaml.Node) error {
	type plain Record
	v := plain(defaultRecord)
	if err := n.Decode(&v); err != nil {
		return err
	}
	*r = Record(v)
	return nil
}

// UnmarshalYAML decodes a dynamic name over defaultDynamicName.
func (d *DynamicName) UnmarshalYAML(n *yaml.Node) error {
	type plain DynamicName
	v := plain(defaultDynamicName)
	if err := n.Decode(&v); err != nil {
		return err
	}
	*d = DynamicName(v)
	return nil
}

func (*Zone) listElement()        {}
func (*Record) listElement()      {}
func (*DynamicName) listElement() {}

// GeoOverride places a network at a location ahead of the GeoIP database.
type GeoOverride struct {
	CIDR      string   `yaml:"cidr"`
	Latitude  *float64 `yaml:"latitude"`
	Longitude *float64 `yaml:"longitude"`
	Country   string   `yaml:"country"`
	Continent string   `yaml:"continent"`
}

// StaticNode is a node of a cluster without a mesh.
type StaticNode struct {
	ID        string   `yaml:"id"`
	Region    string   `yaml:"region"`
	Latitude  float64  `yaml:"latitude"`
	Longitude float64  `yaml:"longitude"`
	IPv4      string   `yaml:"ipv4"`
	IPv6      string   `yaml:"ipv6"`
	Tags      []string `yaml:"tags"`
}

// RRL is response rate limiting.
type RRL struct {
	Enabled         bool `yaml:"enabled"`
	ResponsesPerSec int  `yaml:"responses_per_second"`
	Slip            int  `yaml:"slip"`
	ExemptLoopback  bool `yaml:"exempt_loopback"`
}

// Mesh is membership and peer links.
type Mesh struct {
	Enabled     bool     `yaml:"enabled"`
	Bind        string   `yaml:"bind"`
	Advertise   string   `yaml:"advertise"`
	LinkListen  string   `yaml:"link_listen"`
	Seeds       []string `yaml:"seeds"`
	GossipKeys  []Secret `yaml:"gossip_keys"`
	Profile     string   `yaml:"profile"` // wan, lan, local
	CACert      string   `yaml:"ca_cert"`
	Cert        string   `yaml:"cert"`
	KeyFile     string   `yaml:"key_file"`
	QueueLength int      `yaml:"queue_length"`
}

// Mongo is the multi-master Mongo wire-protocol proxy.
type Mongo struct {
	Enabled bool   `yaml:"enabled"`
	Listen  string `yaml:"listen"`
	// Upstream is the local MongoDB URI. Empty starts an embedded FerretDB
	// (SQLite) in DATA_DIR/mongo.
	Upstream Secret `yaml:"upstream"`
	// Advertise is the address (HOST:PORT) the app reaches the proxy at:
	// hello reports it as the only member (me, primary, hosts) of the
	// replica set the proxy presents. Empty: the address each client
	// connection reached (set it behind NAT or a port forward).
	Advertise string `yaml:"advertise"`
	// SetName is the name of that one-member replica set (the app may
	// put replicaSet=SET_NAME in its connection string).
	SetName   string   `yaml:"set_name"`
	Replicate []string `yaml:"replicate"`
	LocalOnly []string `yaml:"local_only"`
	MaxConns  int      `yaml:"max_conns"`
	// MaxDocumentBytes caps a replicated document as stored (with its
	// replication metadata, which repeats its values) and each write's op:
	// larger writes get error 10334, so that replication (8 MiB mesh
	// messages) can always carry them.
	MaxDocumentBytes ByteSize `yaml:"max_document_bytes"`
	// DocCacheBytes bounds the memory of the documents the proxy keeps as
	// last read or written (charged at about three times their stored
	// size), so that the next write to one, or a peer's op for it, is one
	// database write without a read first; 0: no cache.
	DocCacheBytes ByteSize `yaml:"doc_cache_bytes"`
	// MaxLag: once this node has known for longer than this of a live
	// peer's ops it has not applied, replication reports it not ready
	// (writes are still accepted); 0 never does.
	MaxLag time.Duration `yaml:"max_lag"`
	// LogRetention keeps this node's own ops in its op log at least this
	// long, even once every peer has them (for new nodes' initial syncs).
	LogRetention time.Duration `yaml:"log_retention"`
	// ForgetPeerAfter is how long a node may be missing from the cluster
	// before it stops holding back op log trimming and compaction; it
	// resyncs if it comes back later.
	ForgetPeerAfter time.Duration `yaml:"forget_peer_after"`
	// ClientMessageTimeout: once a client message's first byte arrived,
	// all of it must arrive within this (and a reply must be taken within
	// it), so slow clients cannot hold connection slots or buffers.
	ClientMessageTimeout time.Duration `yaml:"client_message_timeout"`
	// ClientIdleTimeout closes a client connection that sends nothing for
	// this long; 0 never does. Drivers keep idle pooled connections and
	// replace one found closed, so this only frees slots held by clients
	// that went away.
	ClientIdleTimeout time.Duration `yaml:"client_idle_timeout"`
	// MaxClockSkew: a peer's clock reading (its ops' timestamps, its
	// heartbeats, a sync source's clock) more than this ahead of this
	// node's wall clock is refused, so that no peer drags the cluster's
	// clocks into the future; its ops wait until the clocks agree.
	MaxClockSkew time.Duration `yaml:"max_clock_skew"`
	// RetryRecordsBytes bounds what the proxy keeps of retryable writes
	// (per client session, the results of its latest txnNumber's
	// statements, findAndModify's document included) for 30 minutes
	// after each, so that a driver's retry is answered without applying
	// the write again. Beyond it the oldest sessions' results go early
	// (their retries get error 217); 0: no bound.
	RetryRecordsBytes ByteSize `yaml:"retry_records_bytes"`
	// Bootstrap says this node may start a new cluster's data alone. Off,
	// a node with mesh seeds and an empty op log (new, or its data folder
	// wiped) waits, writes refused, until it has heard a peer to sync
	// from, rather than start a cluster of its own from what may be
	// nothing. Also `edgenode run --bootstrap`.
	Bootstrap bool `yaml:"bootstrap"`
	// Archive streams this node's ops to a folder or S3 for
	// point-in-time restores (package archive).
	Archive MongoArchive `yaml:"archive"`
}

// MongoArchive is the continuous op-log archive: this node's ops in
// segments, plus periodic base snapshots, in a folder or under an S3
// prefix; `edgenode restore --to-time` reads it.
type MongoArchive struct {
	// Target is a folder or s3://BUCKET/PREFIX; empty: no archive.
	Target string `yaml:"target"`
	// S3 reaches the bucket of an s3:// target.
	S3 ArchiveS3 `yaml:"s3"`
	// SegmentBytes and SegmentInterval cut a segment when its ops take
	// this many bytes (before compression) or its oldest op has waited
	// this long, whichever comes first.
	SegmentBytes    ByteSize      `yaml:"segment_bytes"`
	SegmentInterval time.Duration `yaml:"segment_interval"`
	// BaseInterval is how often a base snapshot (a backup) is written.
	BaseInterval time.Duration `yaml:"base_interval"`
	// Retention: a restore can reach any time this far back; older
	// segments and bases of this node are deleted. 0: never deleted.
	Retention time.Duration `yaml:"retention"`
}

// ArchiveS3 reaches the archive's bucket.
type ArchiveS3 struct {
	Endpoint        string `yaml:"endpoint"` // e.g. http://127.0.0.1:7070; empty: AWS
	Region          string `yaml:"region"`   // empty: us-east-1
	PathStyle       bool   `yaml:"path_style"`
	AccessKeyID     Secret `yaml:"access_key_id"` // empty: the SDK's standard chain
	SecretAccessKey Secret `yaml:"secret_access_key"`
}

// CDN is the media cache in front of an origin.
type CDN struct {
	Enabled              bool          `yaml:"enabled"`
	Prefix               string        `yaml:"prefix"`
	MaxBytes             ByteSize      `yaml:"max_bytes"`
	MaxEntries           int           `yaml:"max_entries"`
	MaxObjectBytes       ByteSize      `yaml:"max_object_bytes"`
	CacheControl         string        `yaml:"cache_control"`
	TTL                  time.Duration `yaml:"ttl"`
	StaleWhileRevalidate time.Duration `yaml:"stale_while_revalidate"`
	NegativeTTL          time.Duration `yaml:"negative_ttl"`
	OriginTimeout        time.Duration `yaml:"origin_timeout"`
	// MemoryBytes bounds the memory tier: small hot objects (at most
	// MemoryMaxObjectBytes each) are also held in memory, so a hit costs
	// no file read. 0: no memory tier.
	MemoryBytes          ByteSize `yaml:"memory_bytes"`
	MemoryMaxObjectBytes ByteSize `yaml:"memory_max_object_bytes"`
	Origin               Origin   `yaml:"origin"`
	PeerFill             PeerFill `yaml:"peer_fill"`
}

// PeerFill is the media cache's peer fill: on a miss a node asks the
// key's owner among the fleet's nodes (rendezvous hash) before the origin,
// so a cold object costs the origin one GET for the whole fleet. It runs
// only where it can and pays: see Config.PeerFillActive.
type PeerFill struct {
	Enabled bool `yaml:"enabled"`
	// Listen is the peer listener (HTTPS, mutual TLS with the mesh's node
	// certificates). Peers reach it at their advertised address and this
	// port: the port must be the same on every clone.
	Listen string `yaml:"listen"`
	// FirstByteTimeout bounds the wait for the owner's answer; past it the
	// fill goes to the origin.
	FirstByteTimeout time.Duration `yaml:"first_byte_timeout"`
}

// Origin is where cache misses are fetched from: a local folder or S3.
type Origin struct {
	Dir string `yaml:"dir"` // a folder; empty with no S3 bucket: DATA_DIR/origin
	S3  S3     `yaml:"s3"`
}

// S3 is an S3 (or S3-compatible) origin.
type S3 struct {
	Bucket          string            `yaml:"bucket"`
	Buckets         map[string]string `yaml:"buckets"` // tenant (first key segment) -> bucket
	KeyPrefix       string            `yaml:"key_prefix"`
	Region          string            `yaml:"region"`
	Endpoint        string            `yaml:"endpoint"`
	PathStyle       bool              `yaml:"path_style"`
	AccessKeyID     Secret            `yaml:"access_key_id"`
	SecretAccessKey Secret            `yaml:"secret_access_key"`
	Profile         string            `yaml:"profile"`
}

// Default returns the embedded single node: everything on loopback, data in ./data.
func Default() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "local"
	}
	return Config{
		Node: Node{
			ID:           host,
			Region:       "local",
			DataDir:      "./data",
			DrainTimeout: 15 * time.Second,
		},
		Log: Log{Level: "info", Format: "text"},
		HTTPS: HTTPS{
			Listen:            "127.0.0.1:8443",
			CertCheckInterval: 5 * time.Second,
			HTTP3:             true,
			HTTP2Server:       HTTP2Edgenode,
			SessionTickets:    SessionTickets{Rotation: 24 * time.Hour},
			ACME: ACME{
				CA:                 "https://acme-v02.api.letsencrypt.org/directory",
				RenewCheckInterval: 10 * time.Minute,
				OnDemand:           OnDemand{PerClient: 5, Global: 60, Window: time.Minute, MaxNames: 1000, Wait: 8 * time.Second},
			},
			Limits: Limits{
				MaxHeaderBytes:    64 << 10,
				MaxBodyBytes:      10 << 20,
				ReadHeaderTimeout: 10 * time.Second,
				IdleTimeout:       120 * time.Second,
				MaxConnsPerIP:     256,

				MaxWebsocketMessageBytes: 1 << 20,
			},
		},
		Admin: Admin{Listen: "127.0.0.1:9090"},
		DNS: DNS{
			Enabled: true,
			Listen:  "127.0.0.1:8053",
			SlackKM: 200,
			Zones: []Zone{{
				Origin:      "edgenode.test.",
				NS:          []string{"ns1.edgenode.test."},
				Mbox:        "hostmaster.edgenode.test.",
				TTL:         time.Hour,
				NegativeTTL: time.Minute,
				Records: []Record{
					{Name: "ns1", Type: "A", TTL: time.Hour, Value: "127.0.0.1"},
				},
			}},
			Dynamic:          []DynamicName{{Name: "widget.edgenode.test.", Count: 2, TTL: 30 * time.Second}},
			RRL:              RRL{ResponsesPerSec: 50, Slip: 2, ExemptLoopback: true},
			TCPMaxConnsPerIP: 16,
			Measured:         Measured{Enabled: true, SampleRate: 0.05, MinSamples: 20, HalfLife: time.Hour, MaxNetworks: 10000},
		},
		Mesh: Mesh{
			Bind:        "127.0.0.1:7946",
			LinkListen:  "127.0.0.1:7947",
			Profile:     "wan",
			QueueLength: 8192,
		},
		Mongo: Mongo{
			Enabled:          true,
			Listen:           "127.0.0.1:27018",
			SetName:          "edgenode",
			Replicate:        []string{"*"},
			MaxConns:         4096,
			MaxDocumentBytes: 15 << 19,
			DocCacheBytes:    64 << 20,
			MaxLag:           30 * time.Second,
			LogRetention:     10 * time.Minute,
			ForgetPeerAfter:  24 * time.Hour,
			MaxClockSkew:     time.Minute,

			RetryRecordsBytes: 64 << 20,

			ClientMessageTimeout: 30 * time.Second,
			ClientIdleTimeout:    30 * time.Minute,

			Archive: MongoArchive{
				SegmentBytes:    16 << 20,
				SegmentInterval: 10 * time.Second,
				BaseInterval:    24 * time.Hour,
				Retention:       30 * 24 * time.Hour,
			},
		},
		PubSub: PubSub{
			Enabled:         true,
			Tenants:         []Tenant{{Name: "demo", Public: []string{"*"}}},
			History:         100,
			HistoryTTL:      5 * time.Minute,
			MaxMessageBytes: 64 << 10,
			MaxSubsPerConn:  100,
			MaxConnsPerIP:   256,
			QueueLen:        256,
			PingInterval:    25 * time.Second,

			MaxChannels:          100_000,
			MaxChannelsPerTenant: 50_000,
			SubscribeRate:        10,
			SubscribeBurst:       200,
		},
		Web: Web{
			Status:         true,
			StatusInterval: 2 * time.Second,
			Demo:           Demo{Database: "edgenode_demo", Tenant: "demo"},
		},
		CDN: CDN{
			Enabled:              true,
			Prefix:               "/media/",
			MaxBytes:             1 << 30,
			MaxEntries:           100000,
			MaxObjectBytes:       64 << 20,
			CacheControl:         "public, max-age=300",
			TTL:                  time.Minute,
			StaleWhileRevalidate: 10 * time.Minute,
			NegativeTTL:          10 * time.Second,
			OriginTimeout:        10 * time.Second,
			MemoryBytes:          64 << 20,
			MemoryMaxObjectBytes: 64 << 10,
			PeerFill:             PeerFill{Enabled: true, Listen: ":7948", FirstByteTimeout: time.Second},
		},
	}
}

// Problem is one thing wrong with a config.
type Problem struct {
	Path string // dotted key path, e.g. https.limits.max_body_bytes
	File string // the file it is in; "" for Parse's bytes or a variable
	Line int    // 0 when unknown
	Env  string // the environment variable it is in, if any
	What string // what is wrong and what would be right
}

// String is "PATH (WHERE): WHAT", WHERE being "line N", "line N of FILE"
// or "env NAME".
func (p Problem) String() string {
	var where string
	switch {
	case p.Env != "":
		where = "env " + p.Env
	case p.File != "" && p.Line > 0:
		where = fmt.Sprintf("line %d of %s", p.Line, p.File)
	case p.File != "":
		where = p.File
	case p.Line > 0:
		where = fmt.Sprintf("line %d", p.Line)
	}
	loc := p.Path
	switch {
	case loc == "" && where == "":
		loc = "(config)"
	case loc == "":
		loc = where
	case where != "":
		loc += " (" + where + ")"
	}
	return loc + ": " + p.What
}

// Problems is every problem found in one config.
type Problems struct{ List []Problem }

func (ps *Problems) add(path, format string, args ...any) {
	ps.List = append(ps.List, Problem{Path: path, What: fmt.Sprintf(format, args...)})
}

func (ps *Problems) addLine(path string, line int, format string, args ...any) {
	ps.List = append(ps.List, Problem{Path: path, Line: line, What: fmt.Sprintf(format, args...)})
}

func (ps *Problems) Error() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "config has %d problem(s):", len(ps.List))
	for _, p := range ps.List {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

func (ps *Problems) err() error {
	if len(ps.List) == 0 {
		return nil
	}
	return ps
}
