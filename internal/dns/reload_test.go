package dns

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/dns/geoindex/geotest"
	"github.com/edgenode/edgenode/internal/testkit"
)

// parisMovedToTokyo is the client database with 192.0.2.0/26 moved to Tokyo.
func parisMovedToTokyo() []geotest.Network {
	nets := append([]geotest.Network(nil), clientNets...)
	nets[0].Place = geotest.Tokyo
	return nets
}

func TestReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "city.mmdb")
	if err := geotest.Write(path, clientNets); err != nil {
		t.Fatal(err)
	}
	a, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := geotest.Write(path+".b", parisMovedToTokyo()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path + ".b")
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, path, fiveNodes(), func(o *Options) { o.GeoIPPollInterval = -1 })

	// Clients wait for each answer before sending the next, over UDP and
	// TCP, so a loss would be the server's, not the socket buffer's.
	const clients, perClient = 4, 1000
	var failures atomic.Int64
	var seenFra, seenSin atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &mdns.Client{Net: "udp", Timeout: 5 * time.Second}
			addr := ts.udp
			if c%2 == 1 {
				cl.Net, addr = "tcp", ts.tcp
			}
			conn, err := cl.Dial(addr)
			if err != nil {
				t.Error(err)
				failures.Add(perClient)
				return
			}
			defer conn.Close()
			for i := range perClient {
				m := new(mdns.Msg)
				m.SetQuestion("widget.edgenode.test.", mdns.TypeA)
				m.SetEdns0(1232, false)
				m.IsEdns0().Option = append(m.IsEdns0().Option, ecs("192.0.2.0/26"))
				r, _, err := cl.ExchangeWithConn(m, conn)
				if err != nil || r.Rcode != 0 || len(r.Answer) != 2 {
					failures.Add(1)
					if err != nil && failures.Load() < 5 {
						t.Errorf("client %d query %d: %v", c, i, err)
					}
					continue
				}
				switch answerNodes(t, r)[0] {
				case "fra":
					seenFra.Add(1)
				case "sin":
					seenSin.Add(1)
				default:
					failures.Add(1)
				}
			}
		}()
	}
	reloads := 0
	go func() {
		wg.Wait()
		close(stop)
	}()
	for done := false; !done; {
		select {
		case <-stop:
			done = true
			continue
		default:
		}
		data := b
		if reloads%2 == 1 {
			data = a
		}
		// Replace the file the way updaters do: write aside, rename over.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		if err := ts.Reload(); err != nil {
			t.Fatal(err)
		}
		reloads++
	}
	t.Logf("%d queries, %d reloads, fra first %d, sin first %d", clients*perClient, reloads, seenFra.Load(), seenSin.Load())
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d queries failed during reloads", f, clients*perClient)
	}
	if reloads < 2 {
		t.Fatalf("only %d reloads happened", reloads)
	}
	if got := testutil.ToFloat64(ts.m.builds.WithLabelValues("ok")); int(got) != reloads+1 {
		t.Errorf("builds ok = %v, want %d", got, reloads+1)
	}
}

func TestWatcherPicksUpNewDatabase(t *testing.T) {
	path := writeDB(t, clientNets)
	ts := startServer(t, path, fiveNodes(), func(o *Options) { o.GeoIPPollInterval = 20 * time.Millisecond })
	first := func() string {
		return answerNodes(t, ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/26")}))[0]
	}
	if got := first(); got != "fra" {
		t.Fatalf("before: %s", got)
	}
	// A broken file is logged and ignored: answers stay.
	if err := os.WriteFile(path+".tmp", []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, settle, "the broken file to be tried", func() bool {
		return testutil.ToFloat64(ts.m.builds.WithLabelValues("error")) >= 1
	})
	if got := first(); got != "fra" {
		t.Fatalf("after a broken file: %s", got)
	}
	if err := geotest.Write(path, parisMovedToTokyo()); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, settle, "the new database", func() bool { return first() == "sin" })
}

// settle bounds waits for state reached in the background; the long
// deadline only stops a hung test.
const settle = 30 * time.Second

func TestLifecycle(t *testing.T) {
	ts := startServer(t, "", fiveNodes(), nil)
	if err := ts.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	// A second server on the same port fails (TCP has no SO_REUSEPORT)
	// rather than silently sharing the UDP traffic.
	s2, err := New(Options{Listen: ts.tcp, Zones: []Zone{testZone()}}, ts.pub, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Start(context.Background()); err == nil {
		t.Error("second server bound the same port")
		s2.Shutdown(context.Background())
	}
	// Idle TCP connections do not hold up Shutdown.
	cl := &mdns.Client{Net: "tcp", Timeout: 5 * time.Second}
	conn, err := cl.Dial(ts.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := new(mdns.Msg)
	m.SetQuestion("static.edgenode.test.", mdns.TypeA)
	if _, _, err := cl.ExchangeWithConn(m, conn); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with an idle TCP client: %v", err)
	}
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	if _, _, err := cl.ExchangeWithConn(m, conn); err == nil {
		t.Error("connection still answered after Shutdown")
	}
	// Shutdown before Start is fine.
	s3, err := New(Options{Zones: []Zone{testZone()}}, ts.pub, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s3.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestConfigErrors(t *testing.T) {
	base := func() Options { return Options{Zones: []Zone{testZone()}} }
	cases := map[string]func(o *Options){
		"no zones":     func(o *Options) { o.Zones = nil },
		"nested zones": func(o *Options) { o.Zones = append(o.Zones, Zone{Origin: "sub.edgenode.test"}) },
		"root zone":    func(o *Options) { o.Zones = []Zone{{Origin: "."}} },
		"bad type":     func(o *Options) { o.Zones[0].Records = []Record{{Name: "x", Type: "SRV", Value: "0 0 1 x"}} },
		"bad value":    func(o *Options) { o.Zones[0].Records = []Record{{Name: "x", Type: "A", Value: "not-an-ip"}} },
		"outside zone": func(o *Options) { o.Zones[0].Records = []Record{{Name: "x.example.", Type: "A", Value: "192.0.2.1"}} },
		"cname and data": func(o *Options) {
			o.Zones[0].Records = append(o.Zones[0].Records, Record{Name: "www", Type: "TXT", Value: "x"})
		},
		"cname at apex":     func(o *Options) { o.Zones[0].Records = []Record{{Name: "@", Type: "CNAME", Value: "x"}} },
		"under nodes":       func(o *Options) { o.Zones[0].Records = []Record{{Name: "a.nodes", Type: "A", Value: "192.0.2.1"}} },
		"dynamic outside":   func(o *Options) { o.Dynamic = []DynamicName{{Name: "w.example."}} },
		"dynamic twice":     func(o *Options) { o.Dynamic = []DynamicName{{Name: "w"}, {Name: "w"}} },
		"dynamic static A":  func(o *Options) { o.Dynamic = []DynamicName{{Name: "static"}} },
		"dynamic on CNAME":  func(o *Options) { o.Dynamic = []DynamicName{{Name: "www"}} },
		"dynamic K huge":    func(o *Options) { o.Dynamic = []DynamicName{{Name: "w", K: 100}} },
		"override invalid":  func(o *Options) { o.Overrides = []Override{{Country: "DE"}} },
		"override nowhere":  func(o *Options) { o.Overrides = []Override{{Prefix: pfx("10.0.0.0/8")}} },
		"override bad lat":  func(o *Options) { o.Overrides = []Override{{Prefix: pfx("10.0.0.0/8"), Lat: 91, HasCoords: true}} },
		"override bad cont": func(o *Options) { o.Overrides = []Override{{Prefix: pfx("10.0.0.0/8"), Continent: "XX"}} },
		"missing database":  func(o *Options) { o.GeoIPPath = "/nonexistent/city.mmdb" },
		"two records one line": func(o *Options) {
			o.Zones[0].Records = []Record{{Name: "x", Type: "A", Value: "192.0.2.1\nx 300 IN A 192.0.2.2"}}
		},
	}
	for name, mod := range cases {
		o := base()
		o.Zones = append([]Zone(nil), o.Zones...)
		mod(&o)
		if _, err := New(o, nodemapOf(fiveNodes()), nil, nil); err == nil {
			t.Errorf("%s: no error", name)
		} else if strings.TrimSpace(err.Error()) == "" {
			t.Errorf("%s: empty error", name)
		}
	}
	// Relative dynamic names need a single zone.
	o := base()
	o.Zones = append(o.Zones, Zone{Origin: "other.test"})
	o.Dynamic = []DynamicName{{Name: "w"}}
	if _, err := New(o, nodemapOf(nil), nil, nil); err == nil {
		t.Error("relative dynamic name with two zones accepted")
	}
	// Two servers on one registry: the second is told, not panicked at.
	ts := startServer(t, "", fiveNodes(), nil)
	if _, err := New(base(), ts.pub, nil, ts.reg); err == nil {
		t.Error("second registration accepted")
	}
}

func TestMetrics(t *testing.T) {
	ts := startServer(t, writeDB(t, clientNets), fiveNodes(), nil)
	for range 3 {
		ts.query(t, "widget.edgenode.test.", mdns.TypeA, qopt{ecs: ecs("192.0.2.0/26")})
	}
	ts.query(t, "nope.edgenode.test.", mdns.TypeAAAA, qopt{tcp: true})
	ts.query(t, "example.com.", mdns.TypeA, qopt{})
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"edgenode_dns_queries_total", []string{"qtype", "A", "rcode", "NOERROR", "transport", "udp"}, 3},
		{"edgenode_dns_queries_total", []string{"qtype", "AAAA", "rcode", "NXDOMAIN", "transport", "tcp"}, 1},
		{"edgenode_dns_queries_total", []string{"qtype", "A", "rcode", "REFUSED", "transport", "udp"}, 1},
		{"edgenode_dns_queries_total", []string{"qtype", "A", "rcode", "NOERROR", "transport", "tcp"}, 0},
		{"edgenode_dns_dynamic_answers_total", []string{"node", "fra"}, 3},
		{"edgenode_dns_geoindex_networks", nil, float64(len(clientNets))},
		{"edgenode_dns_answer_duration_seconds", []string{"transport", "tcp"}, 1},
		{"edgenode_dns_dropped_total", []string{"reason", "malformed"}, 0},
	} {
		if got := metricValue(t, ts.reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%q = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := testutil.ToFloat64(ts.m.build); got <= 0 {
		t.Errorf("build time missing: %v", got)
	}
	// The server observes latency after its write, so the last reply may
	// arrive before its observation: wait for it.
	testkit.WaitFor(t, settle, "4 UDP latency samples", func() bool {
		return metricValue(t, ts.reg, "edgenode_dns_answer_duration_seconds", "transport", "udp") == 4
	})
}

// TestNoGoroutineLeak: half-sent TCP messages, idle and busy connections
// and garbage all end with Shutdown; nothing the server started survives.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	pub := nodemapOf(fiveNodes())
	s, err := New(Options{Listen: "127.0.0.1:0", Zones: []Zone{testZone()}, GeoIPPath: writeDB(t, clientNets),
		GeoIPPollInterval: 10 * time.Millisecond, MaxTCPConns: 3}, pub, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, tcpAddr := s.Addr()
	var conns []net.Conn
	for i, payload := range [][]byte{
		{0, 40},                   // a length prefix and nothing more
		{0, 5, 1, 2},              // half a message
		{},                        // idle
		{0, 3, 1, 2, 3},           // too short for a header: dropped, closed
		{0, 12, 0, 1, 0, 0, 0, 0}, // beyond MaxTCPConns
	} {
		c, err := net.Dial("tcp", tcpAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
	}
	pub.Publish(fiveNodes()[:3])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		c.Close()
	}
	testkit.WaitFor(t, settle, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}

// Reconfigure swaps zones, dynamic names and overrides in while the server
// runs; a configuration it cannot take changes nothing.
func TestReconfigure(t *testing.T) {
	at := func(p geotest.Place) []Override {
		return []Override{{Prefix: pfx("127.0.0.0/8"), Lat: p.Lat, Lon: p.Lon, HasCoords: true}}
	}
	ts := startServer(t, "", fiveNodes(), func(o *Options) { o.Overrides = at(geotest.Frankfurt) })
	one := func() []string { return answerNodes(t, ts.query(t, "one.edgenode.test.", mdns.TypeA, qopt{})) }
	if got := one(); len(got) != 1 || got[0] != "fra" {
		t.Fatalf("one before: %v, want fra", got)
	}

	o := ts.opts
	z := testZone()
	z.Records = append(z.Records, Record{Name: "new", Type: "A", Value: "192.0.2.77"})
	o.Zones = []Zone{z}
	o.Dynamic = append(o.Dynamic, DynamicName{Name: "two.edgenode.test.", K: 2})
	o.Overrides = at(geotest.Singapore)
	commit, err := ts.Reconfigure(o)
	if err != nil {
		t.Fatal(err)
	}
	if got := one(); len(got) != 1 || got[0] != "fra" {
		t.Fatalf("prepared, not committed: %v, want fra", got)
	}
	commit()
	if got := one(); len(got) != 1 || got[0] != "sin" {
		t.Errorf("one after: %v, want sin (the new override)", got)
	}
	if r := ts.query(t, "new.edgenode.test.", mdns.TypeA, qopt{}); len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "192.0.2.77" {
		t.Errorf("the new record: %v", r.Answer)
	}
	if got := answerNodes(t, ts.query(t, "two.edgenode.test.", mdns.TypeA, qopt{})); len(got) != 2 {
		t.Errorf("the new dynamic name: %v", got)
	}

	bad := o
	bad.Zones = append([]Zone{}, o.Zones...)
	bad.Zones = append(bad.Zones, Zone{Origin: "sub.edgenode.test."}) // nested
	if _, err := ts.Reconfigure(bad); err == nil {
		t.Fatal("nested zones taken")
	}
	if r := ts.query(t, "new.edgenode.test.", mdns.TypeA, qopt{}); len(r.Answer) != 1 {
		t.Errorf("after a refused reconfigure: %v", r.Answer)
	}
}

// Reconfigure turns response rate limiting on, keeps the limiter (and its
// buckets) when the limits stay the same, and turns it off again.
func TestReconfigureRateLimit(t *testing.T) {
	ts := startServer(t, "", fiveNodes(), nil)
	if ts.rrl.Load() != nil {
		t.Fatal("rate limiting on by default")
	}
	o := ts.opts
	o.RRL = RRLOptions{Enabled: true, ResponsesPerSecond: 1, Slip: -1, Loopback: true}
	commit, err := ts.Reconfigure(o)
	if err != nil {
		t.Fatal(err)
	}
	commit()
	rl := ts.rrl.Load()
	if rl == nil {
		t.Fatal("rate limiting still off")
	}
	// 1 response a second for this client: of 20 queries sent as fast as
	// a dropped one times out (0.2 s), most are dropped.
	c := &mdns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
	m := new(mdns.Msg)
	m.SetQuestion("static.edgenode.test.", mdns.TypeA)
	for range 20 {
		_, _, _ = c.Exchange(m, ts.udp)
	}
	if n := metricValue(t, ts.reg, "edgenode_dns_dropped_total", "reason", "rrl"); n == 0 {
		t.Error("no response dropped by the new rate limit")
	}
	commit, err = ts.Reconfigure(o)
	if err != nil {
		t.Fatal(err)
	}
	commit()
	if ts.rrl.Load() != rl {
		t.Error("the same limits made a new limiter: every client got a fresh bucket")
	}
	o.RRL.Enabled = false
	commit, err = ts.Reconfigure(o)
	if err != nil {
		t.Fatal(err)
	}
	commit()
	if ts.rrl.Load() != nil {
		t.Error("rate limiting not turned off")
	}
	if r := ts.query(t, "static.edgenode.test.", mdns.TypeA, qopt{}); len(r.Answer) != 2 {
		t.Errorf("after turning rate limiting off: %v", r)
	}
}
