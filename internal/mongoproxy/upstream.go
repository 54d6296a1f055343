package mongoproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// The upstream database may be a replica set (or one server, or mongos).
// The proxy does not implement server discovery and monitoring: its own
// driver client (Proxy.client) does, as MongoDB's specifications describe
// it, and upstreamTopology only listens to that client's topology events
// (event.ServerMonitor.TopologyDescriptionChanged) to know, at any moment,
// which member is the primary and which are secondaries. Client
// connections are dialed to that primary with the URI's TLS settings, and
// a client connection whose upstream stopped being the primary is closed
// between two messages (see clientConn.setState): its client authenticated on
// that socket, so it cannot be moved, and the driver, seeing the
// connection closed, retries a retryable operation on a new connection,
// which reaches the new primary.

// upstreamTopology is the current primary and secondaries, as the proxy's
// driver client last described them.
type upstreamTopology struct {
	tls *tls.Config // nil: plain TCP (or a Unix socket)

	mu          sync.Mutex
	primary     string   // "" while no primary is known
	secondaries []string // sorted
	summary     string   // the last description, for errors and readiness
	// changed is closed (and replaced) whenever the primary changes.
	changed chan struct{}
	// onChange runs after the primary changed, without mu held.
	onChange func(primary string)
}

func newUpstreamTopology(tlsConf *tls.Config) *upstreamTopology {
	return &upstreamTopology{tls: tlsConf, changed: make(chan struct{}), summary: "no topology description yet"}
}

// monitor is the event.ServerMonitor the proxy's driver client reports to.
func (u *upstreamTopology) monitor() *event.ServerMonitor {
	return &event.ServerMonitor{TopologyDescriptionChanged: func(e *event.TopologyDescriptionChangedEvent) {
		u.update(e.NewDescription)
	}}
}

// update takes a new topology description. A Standalone or mongos counts
// as the primary: every write goes there.
func (u *upstreamTopology) update(d event.TopologyDescription) {
	primary := ""
	var secondaries, parts []string
	for _, s := range d.Servers {
		addr := s.Addr.String()
		parts = append(parts, addr+" "+s.Kind)
		switch s.Kind {
		case "RSPrimary", "Standalone", "Mongos":
			if primary == "" {
				primary = addr
			}
		case "RSSecondary":
			secondaries = append(secondaries, addr)
		}
	}
	slices.Sort(secondaries)
	slices.Sort(parts)
	summary := d.Kind + ": " + strings.Join(parts, ", ")
	if len(parts) == 0 {
		summary = d.Kind + ": no servers"
	}
	u.mu.Lock()
	changed := primary != u.primary
	u.primary, u.secondaries, u.summary = primary, secondaries, summary
	if changed {
		close(u.changed)
		u.changed = make(chan struct{})
	}
	onChange := u.onChange
	u.mu.Unlock()
	if changed && onChange != nil {
		onChange(primary)
	}
}

// errNoPrimary is returned while the upstream has no known primary.
type errNoPrimary struct{ summary string }

func (e *errNoPrimary) Error() string {
	return "edgenode: the upstream database has no known primary (an election in progress, or the members unreachable); topology " + e.summary
}

// Primary returns the current primary's address, or an *errNoPrimary.
func (u *upstreamTopology) Primary() (string, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.primary == "" {
		return "", &errNoPrimary{u.summary}
	}
	return u.primary, nil
}

// current returns the primary ("" while none is known) and a channel
// closed when it next changes.
func (u *upstreamTopology) current() (primary string, changed <-chan struct{}) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.primary, u.changed
}

// isStale reports whether a connection to addr no longer goes to the
// primary (false while no primary is known: there is nowhere better).
func (u *upstreamTopology) isStale(addr string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.primary != "" && addr != u.primary
}

// waitPrimary returns the primary, waiting up to d for one to be known.
func (u *upstreamTopology) waitPrimary(ctx context.Context, d time.Duration) (string, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		u.mu.Lock()
		p, ch, summary := u.primary, u.changed, u.summary
		u.mu.Unlock()
		if p != "" {
			return p, nil
		}
		select {
		case <-ch:
		case <-t.C:
			return "", &errNoPrimary{summary}
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// dial opens a raw connection to the member at addr: a Unix socket for a
// path ending in ".sock", else TCP, with TLS when the URI asks for it.
func (u *upstreamTopology) dial(ctx context.Context, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	if strings.HasSuffix(addr, ".sock") {
		return d.DialContext(ctx, "unix", addr)
	}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil || u.tls == nil {
		return nc, err
	}
	conf := u.tls.Clone()
	if conf.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		conf.ServerName = host
	}
	tc := tls.Client(nc, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// primaryChanged runs when the upstream's primary changed (from the
// driver's monitoring; it must not block). Client connections to the
// former primary close before their next message (clientConn.setState).
func (p *Proxy) primaryChanged(primary string) {
	p.met.primaryChanges.Inc()
	if primary == "" {
		p.met.primaryKnown.Set(0)
		p.log.Warn("the upstream database has no known primary: writes and new client connections wait for one", "upstream", p.upstreamHosts)
		return
	}
	p.met.primaryKnown.Set(1)
	p.log.Info("upstream primary", "primary", primary)
}

// Ready reports whether the upstream database has a known primary: the
// node's readiness check, so that health checks move clients away from a
// node whose database cannot take writes.
func (p *Proxy) Ready() error {
	if _, err := p.up.Primary(); err != nil {
		var np *errNoPrimary
		if errors.As(err, &np) {
			return fmt.Errorf("mongo upstream: no primary known (%s)", np.summary)
		}
		return err
	}
	return nil
}

// Upstream errors the proxy answers with.
const (
	codeHostUnreachable               int32 = 6
	codeFailedToSatisfyReadPreference int32 = 133
	labelRetryableWrite                     = "RetryableWriteError"
)

// noPrimaryReply is a command error while the upstream has no primary:
// 133 FailedToSatisfyReadPreference, what mongos answers when a shard has
// no primary, naming the cause. A write gets 10107 NotWritablePrimary with
// the RetryableWriteError label instead, which MongoDB's retryable-writes
// specification tells a driver to retry after finding the primary again.
func noPrimaryReply(err error, write bool) []byte {
	code, name := codeFailedToSatisfyReadPreference, "FailedToSatisfyReadPreference"
	if write {
		code, name = codeNotWritablePrimary, "NotWritablePrimary"
	}
	idx, b := bsoncore.AppendDocumentStart(nil)
	b = bsoncore.AppendDoubleElement(b, "ok", 0)
	b = bsoncore.AppendStringElement(b, "errmsg", err.Error())
	b = bsoncore.AppendInt32Element(b, "code", code)
	b = bsoncore.AppendStringElement(b, "codeName", name)
	if write {
		b = bsoncore.AppendArrayElement(b, "errorLabels", bsoncore.BuildArray(nil, bsoncore.Value{Type: bsoncore.TypeString, Data: bsoncore.AppendString(nil, labelRetryableWrite)}))
	}
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}
