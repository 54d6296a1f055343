package node

import (
	"context"
	"fmt"
	"net"

	"github.com/edgenode/edgenode/internal/web"
	"github.com/edgenode/edgenode/internal/web/demo"
)

// buildWeb adds the built-in pages: the status page on the admin listener
// and, when enabled, the demo comment app on the public listener. It runs
// last in buildOptionalParts: the status page reads every part's metrics,
// and the demo needs the Mongo proxy and pubsub (n.pubsub).
func (n *Node) buildWeb() error {
	ws := n.cfg.Web
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
	// config.Validate has checked that the demo has the Mongo proxy, pubsub
	// and its tenant.
	if ws.Demo.Enabled {
		var secret []byte
		for _, t := range n.cfg.PubSub.Tenants {
			if t.Name == ws.Demo.Tenant {
				if v, _ := t.Secret.Resolve(); v != "" {
					secret = []byte(v)
				}
			}
		}
		ps := n.pubsub
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
			return fmt.Errorf("web.demo: %w", err)
		}
		for pattern, h := range app.Routes() {
			n.https.Handle(pattern, h)
		}
		n.parts = append(n.parts, &part{
			name:   "demo",
			detail: "demo comment app at /demo/ (thread store: Mongo proxy, database " + ws.Demo.Database + "; live: pubsub tenant " + ws.Demo.Tenant + ")",
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
