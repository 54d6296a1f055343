package node

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/web"
	"github.com/edgenode/edgenode/internal/web/demo"
)

// webSettings are the config keys of the built-in pages:
//
//	web:
//	  status: true            # /status and /status/events on the admin listener
//	  status_interval: 2s     # figures computed, shared with peers, pushed to viewers
//	  demo:
//	    enabled: false        # the demo comment app at /demo/ on the public listener; never in production
//	    database: edgenode_demo
//	    tenant: demo          # its pubsub tenant: threads "comments-*" public, or a secret for tokens
type webSettings struct {
	Status         bool
	StatusInterval time.Duration
	Demo           bool
	DemoDatabase   string
	DemoTenant     string
}

// webConfig reads the web.* keys.
func webConfig(c *config.Config) webSettings {
	w := c.Web
	return webSettings{Status: w.Status, StatusInterval: w.StatusInterval, Demo: w.Demo.Enabled, DemoDatabase: w.Demo.Database, DemoTenant: w.Demo.Tenant}
}

// buildWeb adds the built-in pages: the status page on the admin listener
// and, when enabled, the demo comment app on the public listener. It runs
// last in buildOptionalParts: the status page reads every part's metrics,
// and the demo needs the Mongo proxy and pubsub (n.pubsub).
func (n *Node) buildWeb() error {
	ws := webConfig(&n.cfg)
	if ws.Status {
		src := n.nodes
		var mesh web.Mesh
		if n.mesh != nil {
			mesh = n.mesh
		}
		var parts []string
		for _, p := range n.parts {
			parts = append(parts, p.name)
		}
		st, err := web.NewStatus(web.StatusOptions{
			NodeID: n.cfg.Node.ID, Version: n.version, Nodes: src, Gatherer: n.reg, Mesh: mesh,
			Interval: ws.StatusInterval, Parts: parts,
		}, n.log.With("part", "status"), n.reg)
		if err != nil {
			return fmt.Errorf("web.status: %w", err)
		}
		for pattern, h := range st.Routes() {
			n.admin.Handle(pattern, h)
		}
		n.parts = append(n.parts, &part{
			name:   "status",
			detail: "status page http://" + n.adminLn.Addr().String() + "/status (live over SSE)",
			start:  st.Start,
			// Stopped before the admin listener, whose shutdown waits for
			// the open event streams.
			stop: st.Stop,
		})
	}
	if ws.Demo {
		if !n.cfg.Mongo.Enabled {
			return fmt.Errorf("web.demo.enabled: the demo stores comments through the Mongo proxy: set mongo.enabled")
		}
		if n.pubsub == nil {
			return fmt.Errorf("web.demo.enabled: the demo announces comments on pubsub: set pubsub.enabled")
		}
		var secret []byte
		found := false
		for _, t := range n.cfg.PubSub.Tenants {
			if t.Name == ws.DemoTenant {
				found = true
				if v, _ := t.Secret.Resolve(); v != "" { // validated by config
					secret = []byte(v)
				}
			}
		}
		if !found {
			return fmt.Errorf("web.demo.tenant: %q is not a pubsub tenant (pubsub.tenants)", ws.DemoTenant)
		}
		ps := n.pubsub
		app, err := demo.New(demo.Options{
			NodeID:   n.cfg.Node.ID,
			MongoURI: "mongodb://" + dialable(n.cfg.Mongo.Listen) + "/",
			Database: ws.DemoDatabase,
			Tenant:   ws.DemoTenant,
			// With a secret, threads that are not public get a token.
			TokenSecret: secret,
			// In process: the same Publish that POST /v1/publish calls.
			Publish: func(_ context.Context, channel string, data []byte) error {
				_, err := ps.Publish(channel, data)
				return err
			},
		}, n.log.With("part", "demo"), n.reg)
		if err != nil {
			return fmt.Errorf("web.demo: %w", err)
		}
		for pattern, h := range app.Routes() {
			n.https.Handle(pattern, h)
		}
		n.parts = append(n.parts, &part{
			name:   "demo",
			detail: "demo comment app at /demo/ (thread store: Mongo proxy, database " + ws.DemoDatabase + "; live: pubsub tenant " + ws.DemoTenant + ")",
			start:  app.Start,
			stop:   app.Stop,
		})
	}
	return nil
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
