package node

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/edgenode/edgenode/internal/atomicfile"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/pubsub"
	"github.com/edgenode/edgenode/internal/web"
)

// pubsubPart is live channels: /ws and /sse on the public listener,
// /v1/publish and /v1/presence on the admin listener, fan-out to peers
// through the mesh. It drains before the HTTPS listener does, so clients
// get reconnect-elsewhere before their connections close.
type pubsubPart struct {
	ps *pubsub.PubSub
}

func (p *pubsubPart) Name() string { return "pubsub" }
func (p *pubsubPart) Detail() string {
	return "websocket /ws and SSE /sse, browser client /sdk/v1/edgenode.js; publish with POST /v1/publish on the admin listener"
}
func (p *pubsubPart) Start(context.Context) error     { return nil }
func (p *pubsubPart) Drain(ctx context.Context) error { return p.ps.Drain(ctx) }
func (p *pubsubPart) Stop(context.Context) error      { return p.ps.Close() }

func (n *Node) buildPubSub(mp *meshPart) (*pubsubPart, error) {
	opts, err := pubsubOptions(&n.cfg.PubSub)
	if err != nil {
		return nil, err
	}
	var m pubsub.Mesh
	if mp != nil {
		m = mp.m
	}
	ps, err := pubsub.New(opts, m, n.log.With("part", "pubsub"), n.reg)
	if err != nil {
		return nil, fmt.Errorf("pubsub: %w", err)
	}
	for pattern, h := range ps.Routes() {
		n.https.Handle(pattern, h)
	}
	for pattern, h := range ps.AdminRoutes() {
		n.admin.Handle(pattern, h)
	}
	// Every node with live channels serves their browser client,
	// edgenode.js, so a page loads it from the node it will talk to.
	js, err := web.NewSDK()
	if err != nil {
		return nil, fmt.Errorf("pubsub: %w", err)
	}
	for pattern, h := range js.Routes() {
		n.https.Handle(pattern, h)
	}
	return &pubsubPart{ps: ps}, nil
}

// pubsubOptions translates the pubsub section; see none for its zeros.
func pubsubOptions(c *config.PubSub) (pubsub.Options, error) {
	opts := pubsub.Options{
		History: none(c.History), HistoryTTL: c.HistoryTTL, MaxMessageBytes: c.MaxMessageBytes,
		MaxSubsPerConn: c.MaxSubsPerConn, MaxConnsPerIP: none(c.MaxConnsPerIP), QueueLen: c.QueueLen, PingInterval: c.PingInterval,
		MaxChannels: c.MaxChannels, MaxChannelsPerTenant: c.MaxChannelsPerTenant,
		SubscribeRate: none(c.SubscribeRate), SubscribeBurst: c.SubscribeBurst,
	}
	for i, t := range c.Tenants {
		secret, err := t.Secret.Resolve()
		if err != nil {
			return opts, fmt.Errorf("pubsub.tenants[%d].secret: %w", i, err)
		}
		pt := pubsub.Tenant{Name: t.Name, Origins: t.Origins, Public: t.Public}
		if secret != "" {
			pt.Secret = []byte(secret)
		}
		if t.PublicKey != "" {
			k, err := base64.StdEncoding.DecodeString(t.PublicKey)
			if err != nil || len(k) != ed25519.PublicKeySize {
				return opts, fmt.Errorf("pubsub.tenants[%d].public_key: want a base64 Ed25519 public key", i)
			}
			pt.PublicKey = ed25519.PublicKey(k)
		}
		opts.Tenants = append(opts.Tenants, pt)
	}
	return opts, nil
}

// adminToken is the bearer token of the admin /v1/ routes and of pprof: the
// configured one, or a random one made once in DATA_DIR/publish.secret, so
// those routes are never open by accident. An empty or unreadable token
// stops the node with the key named: failing open here would hand the
// publish, purge and profiling APIs to anyone who reaches the listener.
func adminToken(configured config.Secret, dataDir string) (token, file string, err error) {
	if !configured.IsZero() {
		token, err := configured.Resolve()
		if err != nil {
			return "", "", fmt.Errorf("admin.token: %w", err)
		}
		if strings.TrimSpace(token) == "" {
			return "", "", errors.New("admin.token: the configured token is empty")
		}
		return token, "", nil
	}
	file = filepath.Join(dataDir, "publish.secret")
	b, err := os.ReadFile(file)
	if err == nil {
		token = strings.TrimSpace(string(b))
		if token == "" {
			return "", "", fmt.Errorf("admin.token: %s is empty: remove it to have a new token made, or set admin.token", file)
		}
		return token, file, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", "", fmt.Errorf("admin.token: reading %s: %w", file, err)
	}
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", "", fmt.Errorf("admin.token: %w", err)
	}
	token = hex.EncodeToString(raw)
	if err := atomicfile.Write(file, []byte(token+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("admin.token: %w", err)
	}
	return token, file, nil
}
