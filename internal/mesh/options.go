package mesh

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/serf/coordinate"

	"github.com/edgenode/edgenode/internal/mesh/pki"
)

// Options configure a Mesh. Zero values take the documented defaults.
type Options struct {
	// NodeID names this node in the cluster; it must be unique and match the
	// URI SAN of CertFile. See pki.ValidNodeID for the allowed characters.
	NodeID string
	// Region, location and public addresses are published in the node's
	// gossip metadata for DNS. If neither public address is set, the
	// advertised gossip IP is published as the public address.
	Region        string
	Lat, Lon      float64
	PublicIPv4    netip.Addr
	PublicIPv6    netip.Addr
	Tags          []string
	BinaryVersion string
	ConfigVersion string

	// BindAddr is the gossip address, TCP and UDP. Default "127.0.0.1:7946".
	BindAddr string
	// AdvertiseAddr is the gossip address other nodes use to reach this one.
	// Default: BindAddr (required when BindAddr is an unspecified address).
	AdvertiseAddr string
	// LinkAddr is the UDP address of the QUIC peer links. Default
	// "127.0.0.1:7947". Links are dialed from this same socket, so a peer sees
	// our connections come from the address we advertise.
	LinkAddr string
	// LinkAdvertiseAddr is the link address other nodes dial. Default:
	// LinkAddr, or the gossip advertise IP with LinkAddr's port when LinkAddr
	// binds an unspecified IP.
	LinkAdvertiseAddr string
	// Seeds are gossip addresses (host:port) to join. Our own address is
	// ignored, so every node of a cluster can share one list.
	Seeds []string

	// GossipKeys is the gossip keyring (16, 24 or 32 bytes each, AES-GCM).
	// The first key is primary (used to encrypt); all are tried to decrypt.
	// Empty means unencrypted gossip, which is only allowed when gossip binds
	// and advertises loopback addresses: New refuses it otherwise.
	GossipKeys [][]byte

	// CACertFile, CertFile and KeyFile hold the cluster CA and this node's
	// certificate and key for mutually authenticated peer links. Required.
	CACertFile, CertFile, KeyFile string

	// Profile picks membership timings: "wan" (default), "lan" or "local".
	// Tuning overrides single values of the profile.
	Profile string
	Tuning  Tuning

	// QueueLen bounds each peer's send queue in messages (default 8192);
	// QueueBytes bounds it in payload bytes (default 64 MiB). A message that
	// does not fit is dropped and counted, never waited for.
	QueueLen   int
	QueueBytes int
	// MaxMessageSize bounds one message (default 8 MiB). Larger frames from a
	// peer close that peer's stream.
	MaxMessageSize int

	// LoadUpdateInterval is the least time between two gossiped changes of
	// the load figure (default 2s): load changes often, gossip must not.
	LoadUpdateInterval time.Duration
	// DeadRetention is how long a dead member stays in the node map (default
	// 1h) so the status page can show it; members that leave are removed at
	// once.
	DeadRetention time.Duration
	// DrainTimeout bounds how long Drain waits for the draining state to be
	// gossiped when its context has no earlier deadline (default 5s).
	DrainTimeout time.Duration
	// LeaveTimeout bounds Leave the same way (default 5s).
	LeaveTimeout time.Duration

	// Protocol overrides the mesh protocol version this node speaks
	// (default: the package's Protocol). Only tests set it, to play a node
	// of another version.
	Protocol int
}

// Tuning holds the membership timings. Zero fields keep the profile's value.
type Tuning struct {
	// ProbeInterval is how often each node probes one other member.
	ProbeInterval time.Duration
	// ProbeTimeout is how long a direct probe waits for its ack before
	// indirect probes start; keep it above the 99th percentile RTT.
	ProbeTimeout time.Duration
	// IndirectChecks is how many members are asked to probe for us.
	IndirectChecks int
	// SuspicionMult scales the suspicion timeout:
	// SuspicionMult * max(1, log10(n)) * ProbeInterval.
	SuspicionMult int
	// SuspicionMaxTimeoutMult scales the longest suspicion timeout (used
	// while too few members confirm the suspicion).
	SuspicionMaxTimeoutMult int
	// RetransmitMult scales how often a gossip message is retransmitted.
	RetransmitMult int
	// GossipInterval and GossipNodes drive the gossip of state changes.
	GossipInterval time.Duration
	GossipNodes    int
	// GossipToTheDeadTime is how long a dead member is still gossiped to,
	// so it can refute after a short partition.
	GossipToTheDeadTime time.Duration
	// PushPullInterval is the period of full state syncs over TCP.
	PushPullInterval time.Duration
	// TCPTimeout bounds gossip TCP connections (joins, push/pull, TCP pings).
	TCPTimeout time.Duration
	// AwarenessMaxMultiplier: Lifeguard slows a node's own probing by up to
	// this factor while it misses acks itself, so an overloaded node does
	// not accuse healthy ones.
	AwarenessMaxMultiplier int
	// RejoinInterval is how often this node tries to reach dead members and
	// (when it is alone) the seeds again. memberlist alone never heals a
	// partition that outlasts GossipToTheDeadTime; this does.
	RejoinInterval time.Duration
}

// Profiles. Like memberlist's DefaultWANConfig and DefaultLocalConfig, wan
// and local start from lan and change only what differs, so a value shared
// by all three is written once.

// lanProfile is for nodes on one local network; the other profiles are
// derived from it.
func lanProfile() Tuning {
	return Tuning{
		ProbeInterval:           500 * time.Millisecond,
		ProbeTimeout:            200 * time.Millisecond,
		IndirectChecks:          3,
		SuspicionMult:           3,
		SuspicionMaxTimeoutMult: 4,
		RetransmitMult:          4,
		GossipInterval:          100 * time.Millisecond,
		GossipNodes:             3,
		GossipToTheDeadTime:     20 * time.Second,
		PushPullInterval:        15 * time.Second,
		TCPTimeout:              5 * time.Second,
		AwarenessMaxMultiplier:  8,
		RejoinInterval:          3 * time.Second,
	}
}

// wanProfile is the default: a direct probe tolerates a 400 ms round trip
// (above intercontinental p99), indirect probes and a TCP ping get the
// remaining 350 ms of the interval, and a suspect has 3 probe intervals
// (2.25 s below 10 nodes, 2.9 s at 20) to refute before it is declared
// dead. Gossip fans out wider and less often, and the slow paths (TCP,
// push/pull, rejoin) get more time.
func wanProfile() Tuning {
	t := lanProfile()
	t.ProbeInterval = 750 * time.Millisecond
	t.ProbeTimeout = 400 * time.Millisecond
	t.GossipInterval = 200 * time.Millisecond
	t.GossipNodes = 4
	t.GossipToTheDeadTime = 30 * time.Second
	t.PushPullInterval = 30 * time.Second
	t.TCPTimeout = 10 * time.Second
	t.RejoinInterval = 5 * time.Second
	return t
}

// localProfile is for tests and single-host clusters on loopback: every
// timing shorter, and fewer indirect checks and retransmits.
func localProfile() Tuning {
	t := lanProfile()
	t.ProbeInterval = 300 * time.Millisecond
	t.ProbeTimeout = 150 * time.Millisecond
	t.IndirectChecks = 2
	t.RetransmitMult = 3
	t.GossipInterval = 50 * time.Millisecond
	t.GossipToTheDeadTime = 10 * time.Second
	t.PushPullInterval = 5 * time.Second
	t.TCPTimeout = 2 * time.Second
	t.RejoinInterval = time.Second
	return t
}

// ProfileTuning returns the timings of a named profile ("" means "wan").
func ProfileTuning(name string) (Tuning, error) {
	switch name {
	case "", "wan":
		return wanProfile(), nil
	case "lan":
		return lanProfile(), nil
	case "local":
		return localProfile(), nil
	}
	return Tuning{}, fmt.Errorf("mesh: unknown profile %q (want wan, lan or local)", name)
}

// merge returns t with every non-zero field of o applied.
func (t Tuning) merge(o Tuning) Tuning {
	setD := func(dst *time.Duration, v time.Duration) {
		if v != 0 {
			*dst = v
		}
	}
	setI := func(dst *int, v int) {
		if v != 0 {
			*dst = v
		}
	}
	setD(&t.ProbeInterval, o.ProbeInterval)
	setD(&t.ProbeTimeout, o.ProbeTimeout)
	setI(&t.IndirectChecks, o.IndirectChecks)
	setI(&t.SuspicionMult, o.SuspicionMult)
	setI(&t.SuspicionMaxTimeoutMult, o.SuspicionMaxTimeoutMult)
	setI(&t.RetransmitMult, o.RetransmitMult)
	setD(&t.GossipInterval, o.GossipInterval)
	setI(&t.GossipNodes, o.GossipNodes)
	setD(&t.GossipToTheDeadTime, o.GossipToTheDeadTime)
	setD(&t.PushPullInterval, o.PushPullInterval)
	setD(&t.TCPTimeout, o.TCPTimeout)
	setI(&t.AwarenessMaxMultiplier, o.AwarenessMaxMultiplier)
	setD(&t.RejoinInterval, o.RejoinInterval)
	return t
}

func (t Tuning) validate() error {
	var errs []error
	if t.ProbeInterval <= 0 || t.ProbeTimeout <= 0 || t.ProbeTimeout >= t.ProbeInterval {
		errs = append(errs, fmt.Errorf("probe timeout %v must be positive and below the probe interval %v", t.ProbeTimeout, t.ProbeInterval))
	}
	if t.SuspicionMult < 1 || t.SuspicionMaxTimeoutMult < 1 {
		errs = append(errs, errors.New("suspicion multipliers must be at least 1"))
	}
	if t.GossipInterval <= 0 || t.GossipNodes < 1 || t.RetransmitMult < 1 {
		errs = append(errs, errors.New("gossip interval, gossip nodes and retransmit multiplier must be positive"))
	}
	if t.IndirectChecks < 0 || t.PushPullInterval < 0 || t.TCPTimeout <= 0 || t.RejoinInterval <= 0 || t.AwarenessMaxMultiplier < 1 {
		errs = append(errs, errors.New("indirect checks, push/pull interval, TCP timeout, rejoin interval and awareness multiplier must be valid"))
	}
	return errors.Join(errs...)
}

// DetectionBound is the documented failure-detection bound for a cluster of
// n members: the time from a node's crash until every other member marks it
// dead, when the network is healthy. It is the sum of
//
//   - 2 probe intervals until some live member probes the crashed one (each
//     member probes one other per interval in shuffled round-robin order, so
//     with several probers the first probe comes within about one interval;
//     two covers the unlucky phases);
//   - 1 probe interval for that probe to fail (direct, indirect and TCP
//     attempts run until the end of the interval);
//   - the suspicion timeout SuspicionMult * max(1, log10(n)) * ProbeInterval,
//     which memberlist reaches once SuspicionMult-2 other members confirm
//     (or at once in clusters too small to confirm);
//   - 2 gossip intervals for the "dead" message to spread (log(n) rounds of
//     fan-out GossipNodes).
//
// It is an expected bound, not a hard one: an unlucky probe order can add
// intervals, and a suspicion nobody confirms lasts up to
// SuspicionMaxTimeoutMult times longer. With the "wan" profile it is 4.9 s
// for 3 nodes and 5.6 s for 20; "local" gives 1.9 s for 3 nodes.
func (t Tuning) DetectionBound(n int) time.Duration {
	scale := math.Max(1, math.Log10(math.Max(1, float64(n))))
	suspicion := time.Duration(float64(t.SuspicionMult) * scale * float64(t.ProbeInterval))
	return 3*t.ProbeInterval + suspicion + 2*t.GossipInterval
}

// HealBound is the expected time, once a partition is repaired, until both
// sides see each other alive again. Within GossipToTheDeadTime of the cut
// memberlist heals by itself (it still gossips to the dead, who refute).
// After that only the rejoin loop does: its next round comes within 1.5
// RejoinIntervals (the interval is jittered), one push/pull merges the two
// views (a quick follow-up round carries refutations when both sides still
// remember each other), and gossip spreads the news on each side.
func (t Tuning) HealBound() time.Duration {
	return t.RejoinInterval*3/2 + 4*t.GossipInterval + t.ProbeInterval
}

// Defaults.
const (
	DefaultBindAddr           = "127.0.0.1:7946"
	DefaultLinkAddr           = "127.0.0.1:7947"
	DefaultQueueLen           = 8192
	DefaultQueueBytes         = 64 << 20
	DefaultMaxMessageSize     = 8 << 20
	DefaultLoadUpdateInterval = 2 * time.Second
	DefaultDeadRetention      = time.Hour
	DefaultDrainTimeout       = 5 * time.Second
	DefaultLeaveTimeout       = 5 * time.Second
)

// resolved is Options after defaults and parsing.
type resolved struct {
	Options
	tuning        Tuning
	bind          netip.AddrPort
	advertise     netip.AddrPort
	link          netip.AddrPort
	linkAdvertise netip.AddrPort
	boot          uint64
}

func (o Options) resolve() (*resolved, error) {
	r := &resolved{Options: o, boot: rand.Uint64() | 1}
	var errs []error
	if err := pki.ValidNodeID(o.NodeID); err != nil {
		errs = append(errs, err)
	}
	base, err := ProfileTuning(o.Profile)
	if err != nil {
		errs = append(errs, err)
	}
	r.tuning = base.merge(o.Tuning)
	if err == nil {
		if err := r.tuning.validate(); err != nil {
			errs = append(errs, fmt.Errorf("tuning: %w", err))
		}
	}
	if r.BindAddr == "" {
		r.BindAddr = DefaultBindAddr
	}
	if r.LinkAddr == "" {
		r.LinkAddr = DefaultLinkAddr
	}
	if r.bind, err = parseAddrPort(r.BindAddr); err != nil {
		errs = append(errs, fmt.Errorf("bind address: %w", err))
	}
	if r.link, err = parseAddrPort(r.LinkAddr); err != nil {
		errs = append(errs, fmt.Errorf("link address: %w", err))
	}
	if r.AdvertiseAddr != "" {
		if r.advertise, err = parseAddrPort(r.AdvertiseAddr); err != nil {
			errs = append(errs, fmt.Errorf("advertise address: %w", err))
		}
	} else {
		r.advertise = r.bind
	}
	if r.advertise.IsValid() && (r.advertise.Addr().IsUnspecified() || r.advertise.Port() == 0) {
		errs = append(errs, fmt.Errorf("advertise address %v: set a concrete IP and port (bind address %q is not one)", r.advertise, r.BindAddr))
	}
	if r.bind.IsValid() && r.bind.Port() == 0 {
		errs = append(errs, errors.New("bind address needs a port: other nodes assume the one they were given"))
	}
	if r.LinkAdvertiseAddr != "" {
		if r.linkAdvertise, err = parseAddrPort(r.LinkAdvertiseAddr); err != nil {
			errs = append(errs, fmt.Errorf("link advertise address: %w", err))
		}
	} else if r.link.IsValid() {
		r.linkAdvertise = r.link
		if r.link.Addr().IsUnspecified() && r.advertise.IsValid() {
			r.linkAdvertise = netip.AddrPortFrom(r.advertise.Addr(), r.link.Port())
		}
	}
	if r.linkAdvertise.IsValid() && (r.linkAdvertise.Addr().IsUnspecified() || r.linkAdvertise.Port() == 0) {
		errs = append(errs, fmt.Errorf("link advertise address %v must have a concrete IP and port", r.linkAdvertise))
	}
	if len(o.GossipKeys) == 0 {
		if r.bind.IsValid() && r.advertise.IsValid() && !(r.bind.Addr().IsLoopback() && r.advertise.Addr().IsLoopback()) {
			errs = append(errs, errors.New("gossip keys are required unless gossip binds and advertises loopback addresses only"))
		}
	}
	for i, k := range o.GossipKeys {
		switch len(k) {
		case 16, 24, 32:
		default:
			errs = append(errs, fmt.Errorf("gossip key %d is %d bytes; want 16, 24 or 32", i, len(k)))
		}
	}
	if o.CACertFile == "" || o.CertFile == "" || o.KeyFile == "" {
		errs = append(errs, errors.New("CA certificate, node certificate and key files are required for peer links"))
	}
	if !o.PublicIPv4.IsValid() && !o.PublicIPv6.IsValid() && r.advertise.IsValid() {
		if a := r.advertise.Addr().Unmap(); a.Is4() {
			r.PublicIPv4 = a
		} else {
			r.PublicIPv6 = a
		}
	}
	if r.PublicIPv4.IsValid() && !r.PublicIPv4.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("public IPv4 %v is not an IPv4 address", r.PublicIPv4))
	}
	r.PublicIPv4 = r.PublicIPv4.Unmap()
	if r.PublicIPv6.IsValid() && !r.PublicIPv6.Is6() {
		errs = append(errs, fmt.Errorf("public IPv6 %v is not an IPv6 address", r.PublicIPv6))
	}
	if math.IsNaN(o.Lat) || math.IsNaN(o.Lon) || o.Lat < -90 || o.Lat > 90 || o.Lon < -180 || o.Lon > 180 {
		errs = append(errs, fmt.Errorf("location %v,%v out of range", o.Lat, o.Lon))
	}
	setInt := func(dst *int, def int) {
		if *dst <= 0 {
			*dst = def
		}
	}
	setInt(&r.QueueLen, DefaultQueueLen)
	setInt(&r.QueueBytes, DefaultQueueBytes)
	setInt(&r.MaxMessageSize, DefaultMaxMessageSize)
	setDur := func(dst *time.Duration, def time.Duration) {
		if *dst <= 0 {
			*dst = def
		}
	}
	setDur(&r.LoadUpdateInterval, DefaultLoadUpdateInterval)
	setDur(&r.DeadRetention, DefaultDeadRetention)
	setDur(&r.DrainTimeout, DefaultDrainTimeout)
	setDur(&r.LeaveTimeout, DefaultLeaveTimeout)
	if r.Protocol == 0 {
		r.Protocol = Protocol
	}
	if r.Protocol < 1 || r.Protocol > math.MaxUint16 {
		errs = append(errs, fmt.Errorf("protocol version %d out of range 1..65535", r.Protocol))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("mesh options: %w", err)
	}
	// The metadata must fit memberlist's limit; check now with a load
	// figure and a not-ready reason of the room every node keeps for one,
	// rather than fail later inside gossip.
	widest := r.meta(1, false)
	widest.NotReady = strings.Repeat("x", notReadyRoom)
	widest.Coord = coordinate.NewCoordinate(coordConfig())
	if _, err := encodeMeta(widest); err != nil {
		return nil, fmt.Errorf("mesh options: %w", err)
	}
	return r, nil
}

// meta is this node's gossip metadata for a state and load.
func (r *resolved) meta(load float64, draining bool) Meta {
	st := MetaAlive
	if draining {
		st = MetaDraining
	}
	return Meta{
		ID:            r.NodeID,
		Region:        r.Region,
		Lat:           r.Lat,
		Lon:           r.Lon,
		IPv4:          r.PublicIPv4,
		IPv6:          r.PublicIPv6,
		Tags:          r.Tags,
		State:         st,
		Load:          load,
		BinaryVersion: r.BinaryVersion,
		ConfigVersion: r.ConfigVersion,
		Link:          r.linkAdvertise,
		Boot:          r.boot,
		Protocol:      r.Protocol,
	}
}

// parseAddrPort accepts "ip:port" and "host:port" with a resolvable host.
func parseAddrPort(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: %w", s, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: bad port: %w", s, err)
	}
	if host == "" {
		return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(p)), nil
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: cannot resolve host: %v", s, err)
	}
	a, _ := netip.AddrFromSlice(ips[0])
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
}
