package cdn

// Peer fill: one origin GET per object for the whole fleet.
//
// On a miss a node first asks the peer that should hold the key, the
// owner, and fills from the origin only when the owner is this node, or the
// peer is slow to answer, unreachable, answers an error, or sends a copy
// older than a purge this node knows of. The owner is the highest random
// weight (rendezvous) of the key over the live, verified nodes, among those
// of this node's region when it has any: every node with the same node map
// names the same owner, a node joining or leaving moves only the keys it
// owns, and a request stays in its region when it can.
//
// The owner answers a peer's request from its cache like any client's: a
// hit is sent from disk, a miss starts (or joins) its one fill, coalesced
// with its own clients, which never asks a further peer, so views of the map
// that disagree cost at most one hop. The answer streams: the asker stores
// and serves the bytes as they come, exactly as from the origin, with the
// same checks (length; MD5 when the owner knows its copy's digest or the
// ETag is an S3 single-part MD5). A bad peer copy fails that fill like a
// bad origin body (its clients never get the last byte), and the key then
// skips the peer for a while, so the next request fills from the origin.
//
// The transport is HTTP over mutually authenticated TLS between node
// certificates (the node wires it; see PeerFetcher): HTTP already has what
// large objects need, flow control per stream, lengths and streaming, which
// the mesh's message links, at-most-once with bounded queues that drop,
// would have to grow.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Peer-fill protocol headers.
const (
	// HeaderFetchedAt is when the peer's copy was taken from the origin
	// (RFC 3339, nanoseconds): the asker refuses a copy from before a purge
	// it knows of, and records the time as its own copy's, so a purge that
	// reaches it late still drops the copy.
	HeaderFetchedAt = "X-Edgenode-Fetched-At"
	// HeaderMD5 is the hex MD5 of the whole object, when the peer knows it
	// (its copy is complete).
	HeaderMD5 = "X-Edgenode-Md5"
)

// PeerNode is one node that may own keys.
type PeerNode struct {
	ID     string
	Region string
	Self   bool
}

// Peers are what the cache needs to fill from peers. Implementations must
// be safe for concurrent use.
type Peers interface {
	// Nodes are the live, verified nodes, this one included.
	Nodes() []PeerNode
	// Get asks node for key (GET of its peer route); the caller closes the
	// body. ctx governs the whole transfer.
	Get(ctx context.Context, node, key string) (*http.Response, error)
}

// PeerOptions turn on peer fill.
type PeerOptions struct {
	Peers Peers
	// FirstByte bounds the wait for the owner's answer (its headers); past
	// it the fill goes to the origin. Default 1s.
	FirstByte time.Duration
	// BadFor is how long a key whose peer copy was refused (corrupt, short,
	// broken) fills from the origin only. Default 1 minute.
	BadFor time.Duration
	// ETagIsMD5 checks a peer's copy against its ETag as an S3 single-part
	// MD5 when the peer does not state the digest (it is still filling).
	ETagIsMD5 bool
}

// Owner is the rendezvous owner of key among nodes: the same region as
// region when any node is in it, else any. ok is false without nodes.
func Owner(key, region string, nodes []PeerNode) (owner PeerNode, ok bool) {
	local := false
	for _, n := range nodes {
		if n.Region == region {
			local = true
			break
		}
	}
	var best uint64
	for _, n := range nodes {
		if local && n.Region != region {
			continue
		}
		if w := weight(key, n.ID); !ok || w > best || (w == best && n.ID < owner.ID) {
			owner, best, ok = n, w, true
		}
	}
	return owner, ok
}

func weight(key, node string) uint64 {
	h := sha256.New()
	h.Write([]byte(node))
	h.Write([]byte{0})
	h.Write([]byte(key))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// noPeerKey marks a request context: a miss it starts fills from the
// origin (it is a peer's request, or the owner's own).
type noPeerKey struct{}

func noPeerFill(ctx context.Context) bool { return ctx.Value(noPeerKey{}) != nil }

// PeerHandler answers peers' requests, GET /{key...} below whatever prefix
// the node mounts it at (on a listener that requires node certificates):
// the object as a client would get it, plus HeaderFetchedAt and, when
// known, HeaderMD5. A miss fills from the origin, never from a further peer.
func (c *Cache) PeerHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.PathValue("key")
		if err := ValidateKey(key); err != nil {
			http.Error(w, "bad key: "+err.Error(), http.StatusBadRequest)
			return
		}
		// The copy is as of: the entry's fetch, else the running fill's
		// start, else now (a fill this request starts begins after). A
		// fill that appears in between only began later: the time stays a
		// lower bound, which is the safe side for purges.
		at := time.Now()
		c.mu.Lock()
		if e, ok := c.idx.Peek(key); ok {
			at = e.fetchedAt
			w.Header().Set(HeaderMD5, hex.EncodeToString(e.md5[:]))
		} else if f := c.fills[key]; f != nil {
			at = f.begun
		}
		c.mu.Unlock()
		w.Header().Set(HeaderFetchedAt, at.UTC().Format(time.RFC3339Nano))
		r = r.WithContext(context.WithValue(r.Context(), noPeerKey{}, true))
		r.Header.Del("Range") // a fill wants the whole object
		r.Header.Del("If-None-Match")
		r.Header.Del("If-Modified-Since")
		c.serveKey(w, r, key, true)
	})
}

// Peer fill results, for edgenode_cdn_peer_fills_total{result}.
const (
	peerOK          = "ok"
	peerSlow        = "slow"        // no answer within FirstByte
	peerUnreachable = "unreachable" // connection failed
	peerError       = "error"       // answered other than 200, or malformed
	peerStale       = "stale"       // copy older than a purge known here
	peerCorrupt     = "corrupt"     // length or MD5 mismatch, or broken stream
)

var peerResults = []string{peerOK, peerSlow, peerUnreachable, peerError, peerStale, peerCorrupt}

// fetchMiss is a miss's GET: from the owner when that is a peer, falling
// back to the origin. fromPeer says where obj came from.
func (c *Cache) fetchMiss(ctx context.Context, f *fill, req OriginRequest, stall *stallTimer) (obj *Object, fromPeer bool, err error) {
	if owner, ok := c.peerOwner(f); ok {
		obj, result, err := c.fetchPeer(ctx, owner, f.key)
		if err == nil {
			return obj, true, nil
		}
		c.m.peerFills.WithLabelValues(result).Inc()
		c.log.Info("peer fill failed; filling from the origin", "key", f.key, "peer", owner, "result", result, "err", err)
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		stall.poke() // the origin gets its whole timeout
	}
	obj, err = c.opts.Origin.Fetch(ctx, req)
	return obj, false, err
}

// peerOwner names the peer to ask for f's key, if any.
func (c *Cache) peerOwner(f *fill) (string, bool) {
	p := c.opts.Peer.Peers
	if p == nil || f.old != nil || f.noPeer {
		return "", false
	}
	c.mu.Lock()
	until, bad := c.peerBad.Get(f.key)
	c.mu.Unlock()
	if bad && time.Now().Before(until) {
		return "", false
	}
	nodes := p.Nodes()
	region := ""
	for _, n := range nodes {
		if n.Self {
			region = n.Region
		}
	}
	owner, ok := Owner(f.key, region, nodes)
	if !ok || owner.Self {
		return "", false
	}
	return owner.ID, true
}

// fetchPeer asks node for key and turns its answer into an Object, or says
// why not (result).
func (c *Cache) fetchPeer(ctx context.Context, node, key string) (*Object, string, error) {
	pctx, cancel := context.WithCancel(ctx)
	slow := time.AfterFunc(c.opts.Peer.FirstByte, cancel)
	resp, err := c.opts.Peer.Peers.Get(pctx, node, key)
	if !slow.Stop() {
		if resp != nil {
			resp.Body.Close()
		}
		cancel()
		return nil, peerSlow, fmt.Errorf("no answer within %v", c.opts.Peer.FirstByte)
	}
	if err != nil {
		cancel()
		return nil, peerUnreachable, err
	}
	fail := func(err error) (*Object, string, error) {
		resp.Body.Close()
		cancel()
		return nil, peerError, err
	}
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("peer answered %s", resp.Status))
	}
	at, err := time.Parse(time.RFC3339Nano, resp.Header.Get(HeaderFetchedAt))
	if err != nil {
		return fail(fmt.Errorf("peer answer without a valid %s: %w", HeaderFetchedAt, err))
	}
	if resp.ContentLength < 0 {
		return fail(errors.New("peer answer without a length"))
	}
	c.mu.Lock()
	purged, ok := c.purgedAt.Get(key)
	c.mu.Unlock()
	if ok && at.Before(purged) {
		resp.Body.Close()
		cancel()
		return nil, peerStale, fmt.Errorf("peer's copy was fetched at %v, before the purge of %v", at, purged)
	}
	obj := &Object{
		Body:        cancelOnClose{resp.Body, cancel},
		Size:        resp.ContentLength,
		ETag:        resp.Header.Get("ETag"),
		ContentType: resp.Header.Get("Content-Type"),
		FetchedAt:   at,
	}
	if lm, err := http.ParseTime(resp.Header.Get("Last-Modified")); err == nil {
		obj.LastModified = lm
	}
	if s := resp.Header.Get(HeaderMD5); s != "" {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 16 {
			return fail(fmt.Errorf("peer answer with a malformed %s %q", HeaderMD5, s))
		}
		obj.MD5 = b
	} else if c.opts.Peer.ETagIsMD5 {
		obj.MD5 = md5FromETag(obj.ETag)
	}
	return obj, peerOK, nil
}

// peerRefused records that key's peer copy was bad: it fills from the
// origin for a while.
func (c *Cache) peerRefused(key, result string) {
	c.m.peerFills.WithLabelValues(result).Inc()
	c.mu.Lock()
	c.peerBad.Add(key, time.Now().Add(c.opts.Peer.BadFor))
	c.mu.Unlock()
}

// notePurgeLocked remembers key's latest purge, so no peer's older copy
// brings the object back (under c.mu).
func (c *Cache) notePurgeLocked(key string, at time.Time) {
	if prev, ok := c.purgedAt.Peek(key); !ok || at.After(prev) {
		c.purgedAt.Add(key, at)
	}
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// HTTPPeers is Peers over HTTP: nodes from a function (the node map), and
// requests to a per-node base URL with a client that presents this node's
// certificate and checks the peer's.
type HTTPPeers struct {
	List    func() []PeerNode
	BaseURL func(node string) (string, bool) // e.g. "https://10.0.0.2:8443/v1/cdn/peer/"
	Client  *http.Client
}

func (h *HTTPPeers) Nodes() []PeerNode { return h.List() }

func (h *HTTPPeers) Get(ctx context.Context, node, key string) (*http.Response, error) {
	base, ok := h.BaseURL(node)
	if !ok {
		return nil, fmt.Errorf("no address for peer %s", node)
	}
	u := base + (&url.URL{Path: key}).EscapedPath()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", node, err)
	}
	req.Header.Set("X-Edgenode-Peer", "1")
	resp, err := h.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", node, err)
	}
	return resp, nil
}
