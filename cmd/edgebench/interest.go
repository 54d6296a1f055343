package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/mesh"
	"github.com/edgenode/edgenode/internal/mesh/pki"
	"github.com/edgenode/edgenode/internal/pubsub"
	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/edgenode/edgenode/internal/transport"
)

// interestCmd measures what a publish costs on the mesh links: N nodes in
// this process, each with its real mesh (memberlist gossip and QUIC peer
// links on loopback), pubsub and TLS transport; websocket subscribers on
// some of them; publishes on a node without subscribers. It runs twice on
// fresh nodes: "broadcast", every publish to every peer (the fan-out
// before interest routing, pubsub.Options.BroadcastAll), and "interest",
// to the peers with subscribers only. The figures are the bytes and
// messages written on the mesh topic "pubsub" per publish (summed over
// every node's edgenode_mesh_link_*_total{topic="pubsub",direction="out"}),
// and the control topic's bytes per second over the run (heartbeats,
// interest, presence).
func interestCmd(args []string) error {
	fs := flag.NewFlagSet("interest", flag.ExitOnError)
	nodes := fs.Int("nodes", 5, "nodes")
	subscribed := fs.Int("subscribed", 2, "nodes with subscribers (not the publishing one)")
	subs := fs.Int("subs", 10, "websocket subscribers on each of those")
	messages := fs.Int("m", 2000, "messages to publish")
	rate := fs.Float64("rate", 1000, "messages per second")
	size := fs.Int("size", 100, "message data size in bytes")
	_ = fs.Parse(args)
	if *nodes < 2 || *subscribed < 1 || *subscribed > *nodes-1 || *subs < 1 || *messages < 1 || *rate <= 0 {
		return errors.New("want -nodes >= 2, 1 <= -subscribed <= nodes-1, -subs >= 1, -m >= 1, -rate > 0")
	}
	fmt.Printf("# edgebench interest: %d nodes in one process (real mesh links: QUIC on loopback), %d websocket subscribers on each of %d, "+
		"%d publishes of %d bytes at %.0f/s on a node without subscribers (%d CPUs)\n",
		*nodes, *subs, *subscribed, *messages, *size, *rate, numCPU())
	fmt.Printf("%-10s %21s %5s %18s %17s %14s\n", "fan-out", "delivered/expected", "dup", "link bytes/publish", "link msgs/publish", "ctl bytes/s")
	var base, oldForm float64
	for _, mode := range []string{"broadcast", "interest"} {
		r, err := interestRun(*nodes, *subscribed, *subs, *messages, *rate, *size, mode == "broadcast")
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		bpp := r.bytes / float64(*messages)
		ratio := ""
		if base > 0 {
			ratio = fmt.Sprintf("  (%.0f%% of broadcast)", 100*bpp/base)
		} else {
			base = bpp
		}
		fmt.Printf("%-10s %21s %5d %18.1f %17.2f %14.0f%s\n", mode, fmt.Sprintf("%d/%d", r.delivered, r.expected), r.dups,
			bpp, r.msgs/float64(*messages), r.ctl/r.dur.Seconds(), ratio)
		oldForm = r.oldForm
	}
	fmt.Printf("(before interest routing a publish went to every peer without an id: %.1f bytes per publish here, computed;\n"+
		" the id (stream, sequence number, time) adds about %.0f bytes per message sent)\n",
		oldForm/float64(*messages), (base-oldForm/float64(*messages))/float64(*nodes-1))
	return nil
}

type interestResult struct {
	delivered, expected, dups int64
	bytes, msgs, ctl          float64
	dur                       time.Duration
	oldForm                   float64 // bytes the old broadcast would have written
}

// benchNode is one in-process node.
type benchNode struct {
	m   *mesh.Mesh
	ps  *pubsub.PubSub
	srv *transport.Server
	reg *prometheus.Registry
	ws  string
}

func interestRun(n, subscribed, perNode, messages int, rate float64, size int, broadcast bool) (interestResult, error) {
	var res interestResult
	dir, err := os.MkdirTemp("", "edgebench-interest-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	caDir := filepath.Join(dir, "ca")
	if err := pki.InitCA(caDir); err != nil {
		return res, err
	}
	certFile, keyFile, err := transport.EnsureSelfSigned(dir, nil, log)
	if err != nil {
		return res, err
	}
	var ns []*benchNode
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, b := range ns {
			if b.srv != nil {
				_ = b.srv.Shutdown(ctx)
			}
			if b.ps != nil {
				_ = b.ps.Close()
			}
			_ = b.m.Leave(ctx)
		}
	}()
	var seed string
	for i := range n {
		ip := fmt.Sprintf("127.0.9.%d", 10+i)
		id := fmt.Sprintf("bench%d", i+1)
		gp, err := testkit.PickPort(ip, true)
		if err != nil {
			return res, err
		}
		lp, err := testkit.PickPort(ip, true)
		if err != nil {
			return res, err
		}
		cert, key, err := pki.IssueNode(caDir, id, filepath.Join(dir, "certs"), []string{ip})
		if err != nil {
			return res, err
		}
		gossip := net.JoinHostPort(ip, strconv.Itoa(gp))
		if seed == "" {
			seed = gossip
		}
		b := &benchNode{reg: prometheus.NewRegistry()}
		b.m, err = mesh.New(mesh.Options{
			NodeID: id, PublicIPv4: netip.MustParseAddr(ip),
			BindAddr: gossip, LinkAddr: net.JoinHostPort(ip, strconv.Itoa(lp)), Seeds: []string{seed},
			CACertFile: filepath.Join(caDir, pki.CACertName), CertFile: cert, KeyFile: key, Profile: "local",
		}, log, b.reg)
		if err != nil {
			return res, err
		}
		if err := b.m.Start(context.Background()); err != nil {
			return res, err
		}
		ns = append(ns, b)
		b.ps, err = pubsub.New(pubsub.Options{
			Tenants:      []pubsub.Tenant{{Name: "demo", Public: []string{"*"}}},
			BroadcastAll: broadcast,
		}, b.m, log, b.reg)
		if err != nil {
			return res, err
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return res, err
		}
		b.srv, err = transport.NewFromFiles(ln, certFile, keyFile, log, b.reg)
		if err != nil {
			ln.Close()
			return res, err
		}
		for pat, h := range b.ps.Routes() {
			b.srv.Handle(pat, h)
		}
		go func() { _ = b.srv.Serve() }()
		b.ws = "wss://" + ln.Addr().String() + "/ws"
	}
	// Every node's pubsub heartbeats see a direct path to every other.
	if err := waitUntil(60*time.Second, func() bool {
		for _, b := range ns {
			if gathered(b.reg, "edgenode_pubsub_peer_direct") != float64(n-1) {
				return false
			}
		}
		return true
	}); err != nil {
		return res, errors.New("the nodes' pubsub never saw direct paths to each other")
	}

	const channel = "demo/bench-interest"
	var delivered, dups atomic.Int64
	var wg sync.WaitGroup
	var conns []*websocket.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := websocket.Dialer{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, HandshakeTimeout: 10 * time.Second}
	for i := 1; i <= subscribed; i++ {
		for range perNode {
			c, _, err := d.Dial(ns[i].ws, nil)
			if err != nil {
				return res, err
			}
			conns = append(conns, c)
			if err := c.WriteJSON(map[string]string{"type": "subscribe", "channel": channel}); err != nil {
				return res, err
			}
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			var f struct{ Type string }
			if err := c.ReadJSON(&f); err != nil || f.Type != "subscribed" {
				return res, fmt.Errorf("subscribe: %+v %v", f, err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				seen := make(map[int]bool, messages)
				for len(seen) < messages {
					_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
					var f struct {
						Type string
						Data struct{ I int }
					}
					if err := c.ReadJSON(&f); err != nil {
						return
					}
					if f.Type != "message" {
						continue
					}
					if seen[f.Data.I] {
						dups.Add(1)
						continue
					}
					seen[f.Data.I] = true
					delivered.Add(1)
				}
			}()
		}
	}
	res.expected = int64(subscribed * perNode * messages)

	linkBytes := func(topic string) float64 {
		sum := 0.0
		for _, b := range ns {
			sum += gathered(b.reg, "edgenode_mesh_link_bytes_total", "topic", topic, "direction", "out")
		}
		return sum
	}
	linkMsgs := func() float64 {
		sum := 0.0
		for _, b := range ns {
			sum += gathered(b.reg, "edgenode_mesh_link_messages_total", "topic", pubsub.MeshTopic, "direction", "out")
		}
		return sum
	}
	b0, m0, c0, t0 := linkBytes(pubsub.MeshTopic), linkMsgs(), linkBytes(pubsub.MeshControlTopic), time.Now()
	pad := strings.Repeat("x", max(0, size-16))
	interval := time.Duration(float64(time.Second) / rate)
	for i := range messages {
		data, _ := json.Marshal(map[string]any{"i": i, "p": pad})
		if _, err := ns[0].ps.Publish(channel, data); err != nil {
			return res, err
		}
		// kind, uvarint length of the channel, channel, data; to every peer.
		res.oldForm += float64((n - 1) * (1 + 1 + len(channel) + len(data)))
		if wait := time.Until(t0.Add(time.Duration(i+1) * interval)); wait > 0 {
			time.Sleep(wait)
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
	}
	// The counters move when a batch is written: wait for them to settle.
	peers := float64(subscribed)
	if broadcast {
		peers = float64(n - 1)
	}
	_ = waitUntil(10*time.Second, func() bool { return linkMsgs()-m0 >= peers*float64(messages) })
	res.dur = time.Since(t0)
	res.bytes, res.msgs, res.ctl = linkBytes(pubsub.MeshTopic)-b0, linkMsgs()-m0, linkBytes(pubsub.MeshControlTopic)-c0
	res.delivered, res.dups = delivered.Load(), dups.Load()
	return res, nil
}

// gathered sums the series of metric name in reg whose labels include
// labels (name, value pairs).
func gathered(reg *prometheus.Registry, name string, labels ...string) float64 {
	fams, err := reg.Gather()
	if err != nil {
		return -1
	}
	sum := 0.0
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
				}
				if !found {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func waitUntil(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
