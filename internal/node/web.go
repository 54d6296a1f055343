package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/nodemap"
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
//	    tenant: demo          # its pubsub tenant; threads "comments-*" must be public
type webSettings struct {
	Status         bool
	StatusInterval time.Duration
	Demo           bool
	DemoDatabase   string
	DemoTenant     string
}

// webConfig reads the web.* keys. Until internal/config has them, the
// status page is on with its defaults and the demo is off.
func webConfig(c *config.Config) webSettings {
	_ = c
	return webSettings{Status: true, StatusInterval: web.DefaultStatusInterval, DemoDatabase: demo.DefaultDatabase, DemoTenant: demo.DefaultTenant}
}

// buildWeb adds the built-in pages: the status page on the admin listener
// and, when enabled, the demo comment app on the public listener. It runs
// last in buildOptionalParts: the status page reads every part's metrics,
// and the demo needs the Mongo proxy and pubsub.
func (n *Node) buildWeb() error {
	ws := webConfig(&n.cfg)
	if ws.Status {
		var src nodemap.Source
		var mesh web.Mesh
		if n.mesh != nil {
			src, mesh = n.mesh, n.mesh
		} else {
			src = nodemap.NewPublisher(staticNodes(&n.cfg, n.version))
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
		app, err := demo.New(demo.Options{
			NodeID:   n.cfg.Node.ID,
			MongoURI: "mongodb://" + dialable(n.cfg.Mongo.Listen) + "/",
			Database: ws.DemoDatabase,
			Tenant:   ws.DemoTenant,
			Publish:  n.adminPublisher(),
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

// adminPublisher publishes through this node's own POST /v1/publish on the
// admin listener, exactly as an outside app server does (with the admin
// token when one is set), so the demo exercises the product's real path.
func (n *Node) adminPublisher() func(ctx context.Context, channel string, data []byte) error {
	url := "http://" + dialable(n.adminLn.Addr().String()) + "/v1/publish"
	token, _ := n.cfg.Admin.Token.Resolve() // validated by config
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16, IdleConnTimeout: time.Minute}}
	return func(ctx context.Context, channel string, data []byte) error {
		body, err := json.Marshal(struct {
			Channel string          `json:"channel"`
			Data    json.RawMessage `json:"data"`
		}{channel, data})
		if err != nil {
			return err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("publish: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
		}
		return nil
	}
}
