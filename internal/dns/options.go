// Package dns is edgenode's authoritative GeoIP DNS server. It answers the
// configured zones (SOA, NS, static records) and dynamic names whose A/AAAA
// answers are the nodes nearest to the client that are alive, not draining
// and verified (nodemap.Node.Verified: the mesh vouches for their addresses
// with their certificates), read from a nodemap.Source. Among those, the
// answers name the ready ones (nodemap.Node.Ready: started, Mongo replica
// fresh); when none of a name's pool (tag and address family) is ready,
// all of them, which a metric and a warning say. Per-node names
// <id>.nodes.<zone> name verified nodes only, too, ready or not.
//
// The serving path reads raw packets on reuse-port UDP sockets (one per P,
// each served by one goroutine; on Linux up to 32 datagrams per recvmmsg
// and sendmmsg) and a TCP listener, parses queries with a small strict
// parser and writes answers from precomputed wire-format record tails
// straight into a reused buffer: no dns.Msg per query and no allocation.
// Per-query metrics go to per-socket tallies summed at scrape time.
// github.com/miekg/dns parses the configured records and builds those
// tails.
//
// Where a UDP query's time goes, measured (perf and pprof) on a node under
// dnsperf -c 8 on loopback, 2 cores shared with dnsperf, nine questions
// of which one dynamic (shares of the server's CPU; its CPU per query from
// `make bench`; figures move by some 10% from run to run on a shared
// machine):
//
//	                                        a datagram per   batched   gdnsd
//	                                        system call      (now)
//	sending (sendto, sendmmsg): the kernel       50%           67%      67%
//	  path, incl. delivery to the client
//	receiving (recvfrom, recvmmsg)               11%           15%      26%¹
//	Go's side of ReadFrom and WriteTo: fd        16%            -        -
//	  mutex, poller, syscall entry and exit
//	waiting when the socket runs dry: park,      13%           10%       -
//	  scheduler, epoll, futex, sysmon
//	parsing and answering                         5%            6%       5%²
//	metrics: histogram and shared counters        4%          < 1%       -
//	  per query, time.Now twice per query
//	CPU per query                              3.9 µs        2.9 µs   2.4 µs
//
// ¹ including its wait, blocking in recvmmsg. ² all of gdnsd's user time.
// The waiting row is mostly the sleep and wake-up themselves, which gdnsd
// pays inside its blocking recvmmsg: sleeping in a ppoll instead of the
// poller took the epoll and futex calls away and left the CPU per query
// where it was; the runtime's own user time in a wait (park, scheduler)
// is about 2% of the CPU, 0.05 µs per query. Blocking in recvmmsg or ppoll through Go's system
// call path, spinning, and other socket counts were measured and cost
// more or did not win: see udp_linux.go.
//
// Client location comes from the EDNS Client Subnet option (RFC 7871) when
// present, else from the resolver's address, looked up in an in-memory index
// of a MaxMind database (package geoindex) with configured overrides ahead of
// it. Rankings per location are cached; a new index or a node map that
// changes which nodes serve (or where they are) throws them away, while a
// change of load alone keeps them, since load only matters at pick time.
//
// Answers follow RFC 1034/2308 (NXDOMAIN and NODATA with the zone's SOA,
// empty non-terminals, in-zone CNAME chasing up to 8 hops), RFC 6891 (EDNS0,
// BADVERS), RFC 7871 (ECS), RFC 8482 (one HINFO for ANY) and RFC 7766
// (pipelined TCP). Not supported: DNSSEC (the DO bit is echoed, nothing is
// signed), wildcards, delegations below the apex, nested zones, zone
// transfers (REFUSED), TSIG (NOTAUTH), DNS cookies (ignored, as RFC 7873
// allows).
package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"time"
)

// Defaults for zero fields of Options and the types it holds.
const (
	DefaultListen           = "127.0.0.1:8053"
	DefaultK                = 2
	DefaultDynamicTTL       = 30 * time.Second
	DefaultRecordTTL        = 300 * time.Second
	DefaultSlackKM          = 300.0
	DefaultMaxUDPSize       = 1232 // the DNS flag day 2020 figure: no IP fragmentation
	DefaultTCPIdleTimeout   = 10 * time.Second
	DefaultMaxTCPConns      = 1024
	DefaultMaxTCPConnsPerIP = 16
	DefaultGeoIPPoll        = 5 * time.Second
	DefaultRRLRate          = 200
	DefaultRRLSlip          = 2

	// NodesLabel is the label under each zone that holds per-node names:
	// <node-id>.nodes.<zone>.
	NodesLabel = "nodes"
)

// Options configures a Server. Zero fields take the documented defaults.
type Options struct {
	// Listen is the host:port for both UDP and TCP. Default 127.0.0.1:8053.
	// Bind a specific address: replies leave from the socket's address, so a
	// wildcard bind on a multi-homed host may answer from the wrong source.
	Listen string
	// UDPSockets is how many SO_REUSEPORT UDP sockets (one reader goroutine
	// each) to open. Default GOMAXPROCS. Linux only; elsewhere one.
	UDPSockets int
	// MaxUDPSize is the largest UDP response, also advertised in our OPT
	// record. Default 1232.
	MaxUDPSize int
	// TCPIdleTimeout closes a TCP connection with no query for this long.
	// Default 10s.
	TCPIdleTimeout time.Duration
	// MaxTCPConns bounds open TCP connections; more are closed on accept.
	// Default 1024.
	MaxTCPConns int
	// MaxTCPConnsPerIP bounds open TCP connections per client address,
	// IPv6 addresses grouped by /64 (what one host gets). Connections over
	// it are closed on accept, before anything is read, so one client
	// cannot take all MaxTCPConns. Default 16; negative means no limit.
	MaxTCPConnsPerIP int

	// Zones this server is authoritative for. Zones may not nest.
	Zones []Zone
	// Dynamic names answered with the nearest serving nodes.
	Dynamic []DynamicName
	// NodeTTL is the TTL of per-node names <id>.nodes.<zone>. Default 30s.
	NodeTTL time.Duration

	// GeoIPPath is a MaxMind City or Country database. Empty: no database;
	// clients are placed only by Overrides and otherwise ranked by region
	// and load.
	GeoIPPath string
	// GeoIPPollInterval is how often the database file is checked for
	// changes (modification time, size, inode). Default 5s; negative
	// disables watching (Reload still works).
	GeoIPPollInterval time.Duration
	// Overrides place networks ahead of the database.
	Overrides []Override
	// SlackKM: nodes within this distance of the nearest one count as
	// equally near, and the power of two random choices on load picks among
	// them. Default 300 km; negative means no slack.
	SlackKM float64

	// RRL is response rate limiting.
	RRL RRLOptions

	// Measured, when set, steers dynamic answers by measured round trips:
	// for a client (the ECS address when the query carries one of at
	// least /24, /48 for IPv6; else the resolver), the first of the nodes
	// it names that is a member of the answer goes first (see measured.go).
	// Nil: map distance only.
	Measured Measured
}

// Measured names, for a client address, the nodes measured best from its
// network (package rum implements it). Prefer is called on every dynamic
// answer: it must not block or allocate, and its result is not modified.
type Measured interface {
	Prefer(client netip.Addr) []string
}

// Zone is one zone this server is authoritative for.
type Zone struct {
	// Origin is the zone apex, e.g. "edgenode.test." (the final dot is
	// optional).
	Origin string
	SOA    SOA
	// NS are the zone's name servers. Default: the SOA's MName.
	NS []string
	// NSTTL is the TTL of the NS records. Default: SOA.TTL.
	NSTTL time.Duration
	// Records are static records. Types: A, AAAA, CNAME, TXT, MX, CAA.
	Records []Record
}

// SOA holds the SOA fields. Zero fields take defaults.
type SOA struct {
	MName   string        // default ns1.<origin>
	RName   string        // default hostmaster.<origin>
	Serial  uint32        // default: the time New was called, as Unix seconds
	Refresh time.Duration // default 1h
	Retry   time.Duration // default 10m
	Expire  time.Duration // default 7d
	// Minimum is the negative-caching TTL (RFC 2308). Default 60s.
	Minimum time.Duration
	TTL     time.Duration // TTL of the SOA record itself, default 1h
}

// Record is one static record in presentation format.
type Record struct {
	// Name is relative to the zone origin ("www", "@" for the apex) or
	// absolute with a final dot.
	Name string
	// Type is A, AAAA, CNAME, TXT, MX or CAA.
	Type string
	// TTL defaults to 300s.
	TTL time.Duration
	// Value is the RDATA as in a zone file, e.g. `10 mail` for MX or
	// `"v=spf1 -all"` for TXT. Relative names are relative to the origin.
	Value string
}

// DynamicName is a name answered with the K nearest serving nodes.
type DynamicName struct {
	// Name is relative to a zone ("widget") or absolute ("widget.edgenode.test.").
	Name string
	// Tag selects the pool: nodes carrying this tag. Empty: all nodes.
	Tag string
	// K is how many addresses an answer carries. Default 2.
	K int
	// TTL of the answer. Default 30s.
	TTL time.Duration
}

// Override places a network at a location ahead of the database.
type Override struct {
	Prefix   netip.Prefix
	Lat, Lon float64
	// HasCoords says Lat/Lon are set (0,0 is a real place). Without it, the
	// country's or continent's centre is used.
	HasCoords bool
	Country   string // ISO 3166-1 alpha-2, optional
	Continent string // AF, AN, AS, EU, NA, OC, SA; optional
}

// RRLOptions configure response rate limiting over UDP, per client /24 (IPv4)
// or /56 (IPv6) of the resolver address (see rrl.go for how prefixes share
// a fixed table without ever being handed a fresh bucket).
type RRLOptions struct {
	Enabled bool
	// ResponsesPerSecond per client prefix, also the burst. Default 200.
	ResponsesPerSecond int
	// Slip: every Slip-th limited response is sent truncated (TC=1, no
	// records) instead of dropped, so a real resolver behind a spoofed
	// flood retries over TCP. 0 takes the default 2; negative drops all;
	// 1 truncates all.
	Slip int
	// Loopback applies the limit to loopback clients too; they are exempt
	// by default so local tools and tests are never limited.
	Loopback bool
}

func (o *Options) withDefaults() Options {
	c := *o
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.UDPSockets <= 0 {
		c.UDPSockets = runtime.GOMAXPROCS(0)
	}
	if c.MaxUDPSize <= 0 {
		c.MaxUDPSize = DefaultMaxUDPSize
	}
	c.MaxUDPSize = min(max(c.MaxUDPSize, 512), 65535)
	if c.TCPIdleTimeout <= 0 {
		c.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if c.MaxTCPConns <= 0 {
		c.MaxTCPConns = DefaultMaxTCPConns
	}
	if c.MaxTCPConnsPerIP == 0 {
		c.MaxTCPConnsPerIP = DefaultMaxTCPConnsPerIP
	}
	if c.NodeTTL <= 0 {
		c.NodeTTL = DefaultDynamicTTL
	}
	if c.GeoIPPollInterval == 0 {
		c.GeoIPPollInterval = DefaultGeoIPPoll
	}
	switch {
	case c.SlackKM == 0:
		c.SlackKM = DefaultSlackKM
	case c.SlackKM < 0:
		c.SlackKM = 0
	}
	if c.RRL.ResponsesPerSecond <= 0 {
		c.RRL.ResponsesPerSecond = DefaultRRLRate
	}
	if c.RRL.Slip == 0 {
		c.RRL.Slip = DefaultRRLSlip
	}
	c.Dynamic = append([]DynamicName(nil), c.Dynamic...)
	for i := range c.Dynamic {
		if c.Dynamic[i].K <= 0 {
			c.Dynamic[i].K = DefaultK
		}
		if c.Dynamic[i].TTL <= 0 {
			c.Dynamic[i].TTL = DefaultDynamicTTL
		}
	}
	return c
}

// ttlSeconds converts a TTL to the wire's seconds, clamped to RFC 2181's
// 2^31-1.
func ttlSeconds(d time.Duration) uint32 {
	s := d / time.Second
	if s < 0 {
		return 0
	}
	if s > 1<<31-1 {
		return 1<<31 - 1
	}
	return uint32(s)
}

func (o *Override) validate() error {
	if !o.Prefix.IsValid() {
		return errors.New("override: invalid prefix")
	}
	if o.HasCoords && (o.Lat < -90 || o.Lat > 90 || o.Lon < -180 || o.Lon > 180) {
		return fmt.Errorf("override %s: latitude/longitude out of range", o.Prefix)
	}
	if o.Country != "" && len(o.Country) != 2 {
		return fmt.Errorf("override %s: country %q is not a two-letter code", o.Prefix, o.Country)
	}
	switch strings.ToUpper(o.Continent) {
	case "", "AF", "AN", "AS", "EU", "NA", "OC", "SA":
	default:
		return fmt.Errorf("override %s: unknown continent %q", o.Prefix, o.Continent)
	}
	if !o.HasCoords && o.Country == "" && o.Continent == "" {
		return fmt.Errorf("override %s: needs coordinates, a country or a continent", o.Prefix)
	}
	return nil
}
