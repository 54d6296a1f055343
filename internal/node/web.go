package node

import (
	"context"
	"fmt"
	"net"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/rum"
	"github.com/edgenode/edgenode/internal/web"
	"github.com/edgenode/edgenode/internal/web/demo"
)

// statusPart is the status page on the admin listener, live over SSE.
type statusPart struct {
	st     *web.Status
	detail string
}

func (p *statusPart) Name() string                    { return "status" }
func (p *statusPart) Detail() string                  { return p.detail }
func (p *statusPart) Start(ctx context.Context) error { return p.st.Start(ctx) }

// Stop ends the page's event streams; the admin listener, whose shutdown
// waits for them, stops after.
func (p *statusPart) Stop(ctx context.Context) error { return p.st.Stop(ctx) }

// buildStatus builds the status page; parts names the parts whose figures
// it shows.
func (n *Node) buildStatus(nodes nodemap.Source, mp *meshPart, rp *rumPart, parts []string) (*statusPart, error) {
	var mesh web.Mesh
	if mp != nil {
		mesh = mp.m
	}
	var measured func() []rum.Preference
	if rp != nil {
		measured = rp.table.Preferences
	}
	st, err := web.NewStatus(web.StatusOptions{
		NodeID: n.cfg.Node.ID, Version: n.version, Nodes: nodes, Gatherer: n.reg, Mesh: mesh,
		Interval: n.cfg.Web.StatusInterval, Parts: parts, Measured: measured,
	}, n.log.With("part", "status"), n.reg)
	if err != nil {
		return nil, fmt.Errorf("web.status: %w", err)
	}
	for pattern, h := range st.Routes() {
		n.admin.Handle(pattern, h)
	}
	return &statusPart{st: st, detail: "status page http://" + n.adminLn.Addr().String() + "/status (live over SSE)"}, nil
}

// demoPart is the demo comment app on the public listener.
type demoPart struct {
	app    *demo.App
	detail string
}

func (p *demoPart) Name() string                    { return "demo" }
func (p *demoPart) Detail() string                  { return p.detail }
func (p *demoPart) Start(ctx context.Context) error { return p.app.Start(ctx) }
func (p *demoPart) Stop(ctx context.Context) error  { return p.app.Stop(ctx) }

// buildDemo builds the demo comment app. It stores threads through the
// Mongo proxy's listener and publishes with pubsub in process; config
// validation has checked that both are on and the tenant exists.
func (n *Node) buildDemo(pp *pubsubPart) (*demoPart, error) {
	ws := n.cfg.Web
	var secret []byte
	for _, t := range n.cfg.PubSub.Tenants {
		if t.Name == ws.Demo.Tenant {
			if v, _ := t.Secret.Resolve(); v != "" {
				secret = []byte(v)
			}
		}
	}
	if pp == nil {
		return nil, fmt.Errorf("web.demo.enabled: the demo needs pubsub.enabled")
	}
	ps := pp.ps
	app, err := demo.New(demo.Options{
		NodeID:   n.cfg.Node.ID,
		MongoURI: "mongodb://" + dialable(n.cfg.Mongo.Listen) + "/",
		Database: ws.Demo.Database,
		Tenant:   ws.Demo.Tenant,
		// With a secret, threads that are not public get a token.
		TokenSecret: secret,
		// In process: the same Publish that POST /v1/publish calls.
		Publish: func(_ context.Context, channel string, data []byte) error {
			_, err := ps.Publish(channel, data)
			return err
		},
	}, n.log.With("part", "demo"), n.reg)
	if err != nil {
		return nil, fmt.Errorf("web.demo: %w", err)
	}
	for pattern, h := range app.Routes() {
		n.https.Handle(pattern, h)
	}
	return &demoPart{
		app:    app,
		detail: "demo comment app at /demo/ (thread store: Mongo proxy, database " + ws.Demo.Database + "; live: pubsub tenant " + ws.Demo.Tenant + ")",
	}, nil
}

// dialable turns a listen address into one to connect to: an unspecified
// host (":27018", "0.0.0.0:27018", "[::]:27018") becomes loopback.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
