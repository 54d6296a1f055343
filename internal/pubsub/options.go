package pubsub

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Tenant is one application sharing the node. Its channels are
// "{Name}/{thread}"; nothing of one tenant is ever sent to a connection bound
// to another.
type Tenant struct {
	// Name: 1..32 characters of a-z, 0-9 and '-', starting with a letter or
	// digit.
	Name string
	// Secret is the HMAC-SHA256 key of HS256 subscription tokens (at least
	// 16 bytes). Empty: the tenant does not accept HS256 tokens.
	Secret []byte
	// PublicKey verifies EdDSA (Ed25519) subscription tokens. Nil: the
	// tenant does not accept EdDSA tokens.
	PublicKey ed25519.PublicKey
	// Origins is the Origin allow-list for browsers: exact origins
	// ("https://example.com") or a wildcard for subdomains
	// ("https://*.example.com"). Empty allows every origin. A request
	// without an Origin header (not a browser) is allowed.
	Origins []string
	// Public lists thread patterns anyone may subscribe to without a token:
	// "*" (every thread), "prefix*" or an exact thread name. Every other
	// thread is private and needs a token.
	Public []string
}

// Options configure a PubSub. Zero values take the documented defaults.
type Options struct {
	Tenants []Tenant

	// History is how many messages each channel keeps for recovery
	// (default 100; negative: none). HistoryTTL bounds their age (default
	// 5 minutes); a channel nobody subscribes to is forgotten after it, or
	// sooner when the channel caps need room (MaxChannels).
	History    int
	HistoryTTL time.Duration

	// MaxMessageBytes bounds a published message's data (default 64 KiB).
	MaxMessageBytes int
	// MaxClientFrameBytes bounds one frame from a client (default 4 KiB).
	MaxClientFrameBytes int
	// MaxSubsPerConn bounds the channels one connection subscribes to
	// (default 100).
	MaxSubsPerConn int
	// MaxConnsPerIP bounds websocket plus SSE connections per client: an
	// IPv4 address, or an IPv6 /64 (default 256; negative: no limit).
	MaxConnsPerIP int
	// MaxChannels bounds the channels this node keeps (default 100,000),
	// MaxChannelsPerTenant those of one tenant (default 50,000; at most
	// MaxChannels). Channels nobody subscribes to any more, kept for their
	// history, count too: the one idle longest is forgotten to make room
	// for a new one. When every channel has subscribers, a subscribe to a
	// new one is refused (error too_many_channels).
	MaxChannels          int
	MaxChannelsPerTenant int
	// SubscribeRate (per second, default 10) and SubscribeBurst (default
	// 200) are a token bucket for the subscribe and unsubscribe frames of
	// one websocket. A frame over it is refused with error rate_limited,
	// which counts as a client error (64 of them close the connection).
	// A negative SubscribeRate turns the limit off.
	SubscribeRate  float64
	SubscribeBurst int
	// QueueLen bounds the frames waiting for one connection (default 256).
	// A connection whose queue is full is a slow consumer and is
	// disconnected: it is never waited for.
	QueueLen int

	// PingInterval is how often each connection is pinged (default 25s,
	// under the 30-60s idle timeouts of common proxies). A websocket that
	// sends nothing (no pong either) for 2.5 intervals is dead.
	PingInterval time.Duration
	// WriteTimeout bounds one write to a client (default 10s); a client
	// that takes longer is disconnected as a slow consumer.
	WriteTimeout time.Duration
	// ReadTimeout bounds how long a started websocket frame may take to
	// arrive completely (default 10s).
	ReadTimeout time.Duration
	// CloseGrace is how long a closing websocket waits for the client's
	// close frame (default 2s).
	CloseGrace time.Duration
	// PresenceInterval is how often presence counts are exchanged with
	// peers (default 2s); every tenth round carries all counts.
	PresenceInterval time.Duration

	// HeartbeatInterval is how often each node tells every peer it is
	// there (default 200ms). A direct path that brings no heartbeat for
	// 3.5 intervals is down, and messages go through a peer that reaches
	// both ends instead.
	HeartbeatInterval time.Duration
	// SyncTimeout bounds how long a sync round waits for peers' answers
	// (default 2s): the first subscriber of a channel on a node waits for
	// one, a resuming one whose gap the history here does not cover too.
	SyncTimeout time.Duration
	// DigestInterval is how often each node sends every peer the full list
	// of channels it follows, repairing lost interest messages and finding
	// lost messages (default 20s).
	DigestInterval time.Duration

	// DisablePoller makes every websocket use a reader goroutine instead of
	// the shared epoll readiness loop (Linux). For tests and comparison.
	DisablePoller bool
	// BroadcastAll sends every publish to every peer, whether it follows
	// the channel or not: the fan-out before interest routing, for
	// comparison in benchmarks.
	BroadcastAll bool
}

// Defaults.
const (
	DefaultHistory              = 100
	DefaultHistoryTTL           = 5 * time.Minute
	DefaultMaxMessageBytes      = 64 << 10
	DefaultMaxClientFrameBytes  = 4 << 10
	DefaultMaxSubsPerConn       = 100
	DefaultMaxConnsPerIP        = 256
	DefaultMaxChannels          = 100_000
	DefaultMaxChannelsPerTenant = 50_000
	DefaultSubscribeRate        = 10
	DefaultSubscribeBurst       = 200
	DefaultQueueLen             = 256
	DefaultPingInterval         = 25 * time.Second
	DefaultWriteTimeout         = 10 * time.Second
	DefaultReadTimeout          = 10 * time.Second
	DefaultCloseGrace           = 2 * time.Second
	DefaultPresenceInterval     = 2 * time.Second
	DefaultHeartbeatInterval    = 200 * time.Millisecond
	DefaultSyncTimeout          = 2 * time.Second
	DefaultDigestInterval       = 20 * time.Second
)

func (o *Options) withDefaults() Options {
	r := *o
	setInt := func(p *int, d int) {
		if *p == 0 {
			*p = d
		}
	}
	setDur := func(p *time.Duration, d time.Duration) {
		if *p <= 0 {
			*p = d
		}
	}
	setInt(&r.History, DefaultHistory)
	if r.History < 0 {
		r.History = 0
	}
	setDur(&r.HistoryTTL, DefaultHistoryTTL)
	setInt(&r.MaxMessageBytes, DefaultMaxMessageBytes)
	setInt(&r.MaxClientFrameBytes, DefaultMaxClientFrameBytes)
	setInt(&r.MaxSubsPerConn, DefaultMaxSubsPerConn)
	setInt(&r.MaxConnsPerIP, DefaultMaxConnsPerIP)
	setInt(&r.MaxChannels, DefaultMaxChannels)
	setInt(&r.MaxChannelsPerTenant, DefaultMaxChannelsPerTenant)
	r.MaxChannelsPerTenant = min(r.MaxChannelsPerTenant, r.MaxChannels)
	if r.SubscribeRate == 0 {
		r.SubscribeRate = DefaultSubscribeRate
	}
	setInt(&r.SubscribeBurst, DefaultSubscribeBurst)
	setInt(&r.QueueLen, DefaultQueueLen)
	setDur(&r.PingInterval, DefaultPingInterval)
	setDur(&r.WriteTimeout, DefaultWriteTimeout)
	setDur(&r.ReadTimeout, DefaultReadTimeout)
	setDur(&r.CloseGrace, DefaultCloseGrace)
	setDur(&r.PresenceInterval, DefaultPresenceInterval)
	setDur(&r.HeartbeatInterval, DefaultHeartbeatInterval)
	setDur(&r.SyncTimeout, DefaultSyncTimeout)
	setDur(&r.DigestInterval, DefaultDigestInterval)
	return r
}

func (o *Options) validate() error {
	var errs []error
	if len(o.Tenants) == 0 {
		errs = append(errs, errors.New("no tenants"))
	}
	if o.MaxMessageBytes < 0 || o.MaxClientFrameBytes < 0 || o.MaxSubsPerConn < 0 || o.QueueLen < 0 {
		errs = append(errs, errors.New("MaxMessageBytes, MaxClientFrameBytes, MaxSubsPerConn and QueueLen must not be negative"))
	}
	if o.MaxChannels < 0 || o.MaxChannelsPerTenant < 0 || o.SubscribeBurst < 0 {
		errs = append(errs, errors.New("MaxChannels, MaxChannelsPerTenant and SubscribeBurst must not be negative"))
	}
	if o.MaxClientFrameBytes > 1<<20 {
		errs = append(errs, errors.New("MaxClientFrameBytes above 1 MiB"))
	}
	seen := map[string]bool{}
	for i, t := range o.Tenants {
		if !validTenant(t.Name) {
			errs = append(errs, fmt.Errorf("tenants[%d]: name %q: want 1..32 of a-z, 0-9, '-'", i, t.Name))
		}
		if seen[t.Name] {
			errs = append(errs, fmt.Errorf("tenants[%d]: duplicate name %q", i, t.Name))
		}
		seen[t.Name] = true
		if len(t.Secret) > 0 && len(t.Secret) < 16 {
			errs = append(errs, fmt.Errorf("tenant %q: secret shorter than 16 bytes", t.Name))
		}
		if t.PublicKey != nil && len(t.PublicKey) != ed25519.PublicKeySize {
			errs = append(errs, fmt.Errorf("tenant %q: public key is %d bytes, want %d", t.Name, len(t.PublicKey), ed25519.PublicKeySize))
		}
		for _, o := range t.Origins {
			if _, err := parseOriginPattern(o); err != nil {
				errs = append(errs, fmt.Errorf("tenant %q: origin %q: %w", t.Name, o, err))
			}
		}
		for _, p := range t.Public {
			if !validPattern(p) {
				errs = append(errs, fmt.Errorf("tenant %q: public pattern %q: want \"*\", \"prefix*\" or a thread name", t.Name, p))
			}
		}
	}
	return errors.Join(errs...)
}

// validPattern: "*", "prefix*" or a thread name.
func validPattern(p string) bool {
	if p == "*" {
		return true
	}
	if strings.HasSuffix(p, "*") {
		p = p[:len(p)-1]
		for i := 0; i < len(p); i++ {
			if !threadByte(p[i]) {
				return false
			}
		}
		return true
	}
	return validThread(p)
}

// matchPattern reports whether a pattern from validPattern covers thread.
func matchPattern(p, thread string) bool {
	if strings.HasSuffix(p, "*") {
		return strings.HasPrefix(thread, p[:len(p)-1])
	}
	return p == thread
}
