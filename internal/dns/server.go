package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/clientaddr"
	"github.com/edgenode/edgenode/internal/dns/geoindex"
	"github.com/edgenode/edgenode/internal/nodemap"
)

// Server is the authoritative DNS server. Create it with New, then Start;
// stop it with Shutdown.
type Server struct {
	opts    Options
	log     *slog.Logger
	src     nodemap.Source
	m       *metrics
	rrl     atomic.Pointer[rrl] // nil: no response rate limiting
	nodeTTL uint32
	ovr     []geoindex.Override // under buildMu once New returned
	rrlOpts RRLOptions          // those of rrl; under buildMu

	view    atomic.Pointer[view]
	viewMu  sync.Mutex // serializes replacing the view
	buildMu sync.Mutex // serializes index builds (Reload)

	statMu   sync.Mutex
	lastStat fileID // of the database file behind the current index

	noteMu       sync.Mutex
	noted        map[string]unverifiedNote // alive nodes left out as unverified, by id
	notReady     map[string]string         // serving nodes noted as not ready, with the reason
	unreadyPools map[poolFamily]*unreadyNote

	// Lifecycle: new -> running -> stopped, under life.
	life    sync.Mutex
	state   int
	stop    chan struct{}
	udp     []*udpSocket
	tcp     *net.TCPListener
	conns   map[*net.TCPConn]struct{}
	perIP   map[netip.Addr]int // open TCP connections per tcpClientKey
	wg      sync.WaitGroup
	udpAddr net.Addr
	tcpAddr net.Addr

	outPool sync.Pool // *[]byte response buffers for TCP connections
}

const (
	stateNew = iota
	stateRunning
	stateStopped
)

// outBufSize holds the largest TCP response plus the room an answer may
// take before finish() notices it is too big.
const outBufSize = 2 + maxTCPMessage + 4096

// New compiles the zones, builds the GeoIP index (an error if GeoIPPath is
// set and unreadable) and takes the first node map from nodes. It opens no
// socket; Start does. reg may be nil.
func New(opts Options, nodes nodemap.Source, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if nodes == nil {
		return nil, errors.New("dns: no node map source")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := opts.withDefaults()
	c, err := compile(&o)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:    o,
		log:     log,
		src:     nodes,
		nodeTTL: ttlSeconds(o.NodeTTL),
		conns:   map[*net.TCPConn]struct{}{},
		perIP:   map[netip.Addr]int{},
		noted:   map[string]unverifiedNote{},

		notReady:     map[string]string{},
		unreadyPools: map[poolFamily]*unreadyNote{},
	}
	s.outPool.New = func() any { b := make([]byte, outBufSize); return &b }
	if s.ovr, err = overrides(o.Overrides); err != nil {
		return nil, err
	}
	if s.m, err = newMetrics(reg); err != nil {
		return nil, err
	}
	if o.RRL.Enabled {
		s.rrl.Store(newRRL(o.RRL))
	}
	s.rrlOpts = o.RRL

	ix, id, err := s.buildIndex(s.ovr)
	if err != nil {
		return nil, err
	}
	s.lastStat = id
	if o.GeoIPPath == "" {
		log.Warn("dns: no GeoIP database configured; clients outside the overrides are ranked by region and load",
			"overrides", len(s.ovr))
	}
	m, changed := nodes.Current()
	ns := s.nodeState(c, m)
	s.view.Store(newView(c, ns, changed, ix, nil))
	s.m.mapVer.Set(float64(m.Version))
	return s, nil
}

// fileID tells whether the database file was replaced or rewritten.
type fileID struct {
	size  int64
	mtime int64 // ns
	ino   uint64
}

func statFile(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	id := fileID{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ino = uint64(st.Ino)
	}
	return id, nil
}

// buildIndex builds an index from the configured database and overrides.
// The file's identity is taken before reading it, so a change during the
// build is seen again by the next poll.
func (s *Server) buildIndex(ovr []geoindex.Override) (*geoindex.Index, fileID, error) {
	var id fileID
	if s.opts.GeoIPPath != "" {
		var err error
		if id, err = statFile(s.opts.GeoIPPath); err != nil {
			s.m.builds.WithLabelValues("error").Inc()
			return nil, id, fmt.Errorf("dns: GeoIP database: %w", err)
		}
	}
	ix, err := geoindex.Build(s.opts.GeoIPPath, ovr)
	if err != nil {
		s.m.builds.WithLabelValues("error").Inc()
		return nil, id, fmt.Errorf("dns: %w", err)
	}
	st := ix.Stats()
	s.m.builds.WithLabelValues("ok").Inc()
	s.m.networks.Set(float64(ix.NumNetworks()))
	s.m.locs.Set(float64(ix.NumLocations()))
	s.m.build.Set(st.Duration.Seconds())
	s.log.Info("dns: GeoIP index built", "path", s.opts.GeoIPPath, "type", st.DatabaseType,
		"networks_v4", st.Networks4, "networks_v6", st.Networks6, "locations", st.Locations,
		"overrides", st.Overrides, "took", st.Duration.Round(time.Millisecond))
	return ix, id, nil
}

// Reload rebuilds the GeoIP index from the database file and swaps it in.
// Queries keep being answered from the old index until the swap; on error
// the old index stays. Safe to call at any time (SIGHUP).
func (s *Server) Reload() error {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	ix, id, err := s.buildIndex(s.ovr)
	if err != nil {
		s.log.Error("dns: GeoIP reload failed; keeping the current index", "err", err)
		return err
	}
	s.statMu.Lock()
	s.lastStat = id
	s.statMu.Unlock()
	s.viewMu.Lock()
	cur := s.view.Load()
	s.view.Store(newView(cur.c, cur.ns, cur.changed, ix, cur))
	s.viewMu.Unlock()
	return nil
}

// Reconfigure takes what a config reload may change while the server
// runs: the zones, the dynamic names, the overrides, the slack and
// response rate limiting (opts' other fields are ignored: they need a
// restart). It checks and builds everything first, changing nothing, and
// returns the func that swaps it in; queries in flight finish with the old
// zones, the next ones see the new. An error leaves the server as it is.
func (s *Server) Reconfigure(opts Options) (commit func(), err error) {
	o := s.opts
	o.Zones, o.Dynamic, o.Overrides, o.SlackKM, o.RRL = opts.Zones, opts.Dynamic, opts.Overrides, opts.SlackKM, opts.RRL
	o = o.withDefaults()
	c, err := compile(&o)
	if err != nil {
		return nil, err
	}
	ovr, err := overrides(o.Overrides)
	if err != nil {
		return nil, err
	}
	// The index holds the overrides: rebuilt only when they changed.
	s.buildMu.Lock()
	sameOvr := slices.Equal(ovr, s.ovr)
	s.buildMu.Unlock()
	var ix *geoindex.Index
	var id fileID
	if !sameOvr {
		if ix, id, err = s.buildIndex(ovr); err != nil {
			return nil, err
		}
	}
	return func() {
		s.buildMu.Lock()
		defer s.buildMu.Unlock()
		if ix != nil {
			s.ovr = ovr
			// Should the database have changed since ix was built, the
			// watcher sees a newer file than this and rebuilds.
			s.statMu.Lock()
			s.lastStat = id
			s.statMu.Unlock()
		}
		// Same limits: the same limiter, so reloading hands no client a
		// fresh bucket.
		if o.RRL != s.rrlOpts {
			var rl *rrl
			if o.RRL.Enabled {
				rl = newRRL(o.RRL)
			}
			s.rrl.Store(rl)
		}
		s.rrlOpts = o.RRL
		s.viewMu.Lock()
		defer s.viewMu.Unlock()
		cur := s.view.Load()
		if ix == nil {
			ix = cur.ix
		}
		m, changed := s.src.Current()
		s.noteMu.Lock()
		clear(s.unreadyPools) // indexed by the old pools
		s.noteMu.Unlock()
		s.view.Store(newView(c, s.nodeState(c, m), changed, ix, cur))
		s.log.Info("dns: reconfigured", "zones", len(c.zoneList), "dynamic", len(c.dynamics), "overrides", len(ovr))
	}, nil
}

// overrides checks and translates Options.Overrides.
func overrides(ovs []Override) ([]geoindex.Override, error) {
	var out []geoindex.Override
	for _, ov := range ovs {
		if err := ov.validate(); err != nil {
			return nil, fmt.Errorf("dns: %w", err)
		}
		l := geoindex.Location{Lat: float32(ov.Lat), Lon: float32(ov.Lon), HasCoords: ov.HasCoords}
		if len(ov.Country) == 2 {
			cc := strings.ToUpper(ov.Country)
			l.Country = [2]byte{cc[0], cc[1]}
		}
		if len(ov.Continent) == 2 {
			cc := strings.ToUpper(ov.Continent)
			l.Continent = [2]byte{cc[0], cc[1]}
		}
		out = append(out, geoindex.Override{Prefix: ov.Prefix, Location: l})
	}
	return out, nil
}

func (s *Server) nodeState(c *compiled, m *nodemap.Map) *nodeState {
	ns, warnings := buildNodeState(c, m, func(id string) counter { return s.m.answers.WithLabelValues(id) })
	for _, w := range warnings {
		s.log.Warn("dns: " + w)
	}
	now := time.Now()
	s.noteUnverified(m, now)
	s.noteReadiness(c, ns, now)
	return ns
}

// poolFamily is one pool's members for one address family.
type poolFamily struct{ pool, fam int }

// unreadyNote is what was said of a pool whose nodes are none ready.
type unreadyNote struct {
	in     bool      // no node of it is ready now
	warned time.Time // last warning; zero when none
}

// noteReadiness counts and logs the nodes the answers leave out as not
// ready, and the pools that answer with not-ready nodes because none is
// ready. A node is logged at Info when it is first left out, when its
// reason changes and when it is back. A pool without a ready node is
// logged at Warn when that starts and then once per renoteEvery while it
// lasts, never more often, however often the map changes (a pool that
// flaps is warned about once per renoteEvery); its recovery at Info after
// a warning.
func (s *Server) noteReadiness(c *compiled, ns *nodeState, now time.Time) {
	s.noteMu.Lock()
	defer s.noteMu.Unlock()
	for id, why := range ns.notReady {
		if prev, ok := s.notReady[id]; !ok || prev != why {
			s.log.Info("dns: node left out of dynamic answers while another is ready: it is not ready", "node", id, "reason", why)
			s.notReady[id] = why
		}
	}
	for id := range s.notReady {
		if _, ok := ns.notReady[id]; !ok {
			delete(s.notReady, id)
			s.log.Info("dns: node ready (or gone); left out no longer for readiness", "node", id)
		}
	}
	s.m.unready.Set(float64(len(ns.notReady)))

	pools := 0
	for p := range ns.pools {
		for fam := range 2 {
			ms := &ns.pools[p][fam]
			key := poolFamily{p, fam}
			note := s.unreadyPools[key]
			if !ms.unready {
				if note != nil && note.in {
					note.in = false
					if !note.warned.IsZero() {
						s.log.Info("dns: a node is ready again; dynamic answers name ready nodes only", s.poolAttrs(c, p, fam, nil, nil)...)
					}
				}
				continue
			}
			pools++
			if note == nil {
				note = &unreadyNote{}
				s.unreadyPools[key] = note
			}
			note.in = true
			if note.warned.IsZero() || now.Sub(note.warned) >= renoteEvery {
				note.warned = now
				s.log.Warn("dns: no node is ready; dynamic answers name alive, verified nodes that are not ready "+
					"rather than none (further warnings about this pool at most once a minute)", s.poolAttrs(c, p, fam, ns, ms)...)
			}
		}
	}
	s.m.unreadyPools.Set(float64(pools))
}

// poolAttrs describes a pool and family for a log line: its tag, the
// dynamic names it answers, and with ns, its members and their reasons.
func (s *Server) poolAttrs(c *compiled, p, fam int, ns *nodeState, ms *members) []any {
	tag := c.pools[p]
	if tag == "" {
		tag = "(all nodes)"
	}
	var names []string
	for _, d := range c.dynamics {
		if d.pool == p {
			names = append(names, d.name)
		}
	}
	family := "A"
	if fam == famV6 {
		family = "AAAA"
	}
	attrs := []any{"names", names, "type", family, "tag", tag}
	if ns != nil {
		var nodes []string
		for _, i := range ms.node {
			id := ns.nodes[i].id
			nodes = append(nodes, id+": "+ns.notReady[id])
		}
		attrs = append(attrs, "nodes", nodes)
	}
	return attrs
}

// unverifiedNote is when a node left out of the answers was last logged,
// and why it was left out then.
type unverifiedNote struct {
	why   string
	at    time.Time
	since time.Time // first left out
}

// renoteEvery is how often a node that stays unverified is logged again.
// The map changes every few seconds (load), so this is also about how late
// the repeat comes.
const renoteEvery = time.Minute

// noteUnverified counts the alive nodes m leaves out of the answers as
// unverified and logs each: at Info when it is first left out or the reason
// changes (every peer is, briefly, until its link is up), then at Warn once
// per renoteEvery while it stays left out; and at Info when it is back.
func (s *Server) noteUnverified(m *nodemap.Map, now time.Time) {
	s.noteMu.Lock()
	defer s.noteMu.Unlock()
	left := 0
	seen := make(map[string]bool, len(s.noted))
	for i := range m.Nodes {
		n := &m.Nodes[i]
		if n.State != nodemap.Alive || n.Verified {
			continue
		}
		left++
		seen[n.ID] = true
		prev, ok := s.noted[n.ID]
		if !ok {
			prev.since = now
		}
		switch {
		case !ok || prev.why != n.Unverified:
			s.log.Info("dns: node left out of answers: its addresses are not verified", "node", n.ID, "reason", n.Unverified)
		case now.Sub(prev.at) >= renoteEvery:
			s.log.Warn("dns: node still left out of answers: its addresses are not verified", "node", n.ID,
				"reason", n.Unverified, "for", now.Sub(prev.since).Round(time.Second).String())
		default:
			continue
		}
		s.noted[n.ID] = unverifiedNote{why: n.Unverified, at: now, since: prev.since}
	}
	for id := range s.noted {
		if seen[id] {
			continue
		}
		delete(s.noted, id)
		if n, ok := m.Node(id); ok && n.Verified && n.State == nodemap.Alive {
			s.log.Info("dns: node verified; in answers again", "node", id)
		}
	}
	s.m.unverified.Set(float64(left))
}

// currentView returns the view to answer from. If the node map changed
// since the view was made, it is rebuilt first, so a change shows in the
// very next answer even if the watcher goroutine has not run yet.
func (s *Server) currentView() *view {
	v := s.view.Load()
	select {
	case <-v.changed:
		return s.refreshNodes()
	default:
		return v
	}
}

func (s *Server) refreshNodes() *view {
	s.viewMu.Lock()
	defer s.viewMu.Unlock()
	cur := s.view.Load()
	select {
	case <-cur.changed:
	default:
		return cur // someone else refreshed it
	}
	m, changed := s.src.Current()
	ns := s.nodeState(cur.c, m)
	nv := newView(cur.c, ns, changed, cur.ix, cur)
	s.view.Store(nv)
	s.m.mapVer.Set(float64(m.Version))
	s.log.Debug("dns: node map changed", "version", m.Version, "nodes", len(m.Nodes))
	return nv
}

// Start opens the UDP sockets and the TCP listener on Options.Listen and
// starts serving. ctx bounds the binding only; the server runs until
// Shutdown.
func (s *Server) Start(ctx context.Context) error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.state != stateNew {
		return errors.New("dns: Start called twice or after Shutdown")
	}
	udp, tcp, err := listen(ctx, s.opts.Listen, s.opts.UDPSockets)
	if err != nil {
		return err
	}
	s.udpAddr, s.tcpAddr = udp[0].LocalAddr(), tcp.Addr()
	socks := make([]*udpSocket, 0, len(udp))
	for i, c := range udp {
		_ = c.SetReadBuffer(4 << 20) // ride out bursts; the kernel caps it
		u, err := newUDPSocket(c)
		if err != nil {
			for _, u := range socks {
				u.close()
			}
			for _, c := range udp[i+1:] {
				c.Close()
			}
			tcp.Close()
			return err
		}
		socks = append(socks, u)
	}
	s.udp, s.tcp = socks, tcp
	s.stop = make(chan struct{})
	s.state = stateRunning
	for _, u := range s.udp {
		s.wg.Add(1)
		go s.serveUDP(u)
	}
	s.wg.Add(3)
	go s.acceptTCP(tcp)
	go s.watchNodes()
	go s.watchFile()
	s.log.Info("dns: serving", "udp", s.udpAddr.String(), "tcp", s.tcpAddr.String(), "udp_sockets", len(udp),
		"zones", len(s.view.Load().c.zoneList), "dynamic", len(s.view.Load().c.dynamics))
	return nil
}

// listen binds n reuse-port UDP sockets and one TCP listener on the same
// port. With port 0 the UDP socket picks the port and TCP follows; if TCP
// cannot have it, try again with another.
func listen(ctx context.Context, addr string, n int) ([]*net.UDPConn, *net.TCPListener, error) {
	if !reusePortSupported {
		n = 1
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dns: listen address %q: %w", addr, err)
	}
	lc := net.ListenConfig{}
	if n > 1 {
		lc.Control = reusePort
	}
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		var udp []*net.UDPConn
		closeAll := func() {
			for _, c := range udp {
				c.Close()
			}
		}
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dns: listen udp %s: %w", addr, err)
		}
		udp = append(udp, pc.(*net.UDPConn))
		bound := pc.LocalAddr().String()
		for len(udp) < n {
			pc, err := lc.ListenPacket(ctx, "udp", bound)
			if err != nil {
				closeAll()
				return nil, nil, fmt.Errorf("dns: listen udp %s (socket %d): %w", bound, len(udp)+1, err)
			}
			udp = append(udp, pc.(*net.UDPConn))
		}
		// TCP without SO_REUSEPORT: a second server on the same port fails
		// here instead of silently sharing the UDP traffic.
		l, err := (&net.ListenConfig{}).Listen(ctx, "tcp", bound)
		if err != nil {
			closeAll()
			lastErr = fmt.Errorf("dns: listen tcp %s: %w", bound, err)
			if port == "0" && errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return nil, nil, lastErr
		}
		return udp, l.(*net.TCPListener), nil
	}
	return nil, nil, lastErr
}

// Addr returns the bound UDP and TCP addresses (nil before Start).
func (s *Server) Addr() (udp, tcp net.Addr) {
	s.life.Lock()
	defer s.life.Unlock()
	return s.udpAddr, s.tcpAddr
}

// Shutdown stops accepting queries, lets TCP queries in progress finish
// their answer, and waits for every goroutine until ctx ends; then it closes
// what is left and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.life.Lock()
	if s.state != stateRunning {
		s.state = stateStopped
		s.life.Unlock()
		return nil
	}
	s.state = stateStopped
	close(s.stop)
	for _, u := range s.udp {
		u.wake()
	}
	s.tcp.Close()
	// Wake connections blocked waiting for their next query; one busy
	// answering finishes its write first.
	for c := range s.conns {
		_ = c.SetReadDeadline(time.Now())
	}
	s.life.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.log.Info("dns: stopped")
		return nil
	case <-ctx.Done():
		s.life.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.life.Unlock()
		<-done
		return ctx.Err()
	}
}

func (s *Server) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *Server) acceptTCP(l *net.TCPListener) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.stopping() {
				return
			}
			// Out of file descriptors and the like: back off, don't spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("dns: tcp accept", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.stop:
				return
			}
			continue
		}
		backoff = 0
		var client netip.Addr
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			client = ta.AddrPort().Addr().Unmap()
		}
		key := clientaddr.Key(client)
		s.life.Lock()
		refused := ""
		switch {
		case s.state != stateRunning:
			refused = "stopping"
		case len(s.conns) >= s.opts.MaxTCPConns:
			refused = "max_conns"
		case s.opts.MaxTCPConnsPerIP > 0 && s.perIP[key] >= s.opts.MaxTCPConnsPerIP:
			refused = "conns_per_ip"
		}
		if refused != "" {
			s.life.Unlock()
			if refused != "stopping" {
				s.m.tcpRefused.WithLabelValues(refused).Inc()
			}
			c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.perIP[key]++
		s.wg.Add(1)
		s.life.Unlock()
		go s.serveTCP(c, client, key)
	}
}

// serveTCP answers length-prefixed queries on one connection in order
// (RFC 7766 pipelining) until the client closes, goes idle, sends something
// we drop, or the server stops.
func (s *Server) serveTCP(c *net.TCPConn, client, key netip.Addr) {
	defer s.wg.Done()
	defer func() {
		s.life.Lock()
		delete(s.conns, c)
		if s.perIP[key]--; s.perIP[key] <= 0 {
			delete(s.perIP, key)
		}
		s.life.Unlock()
		c.Close()
	}()
	var lenBuf [2]byte
	in := make([]byte, 512)
	for {
		if s.stopping() {
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(s.opts.TCPIdleTimeout))
		if s.stopping() {
			// Shutdown may have set its deadline just before ours.
			return
		}
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		if n > len(in) {
			in = make([]byte, n)
		}
		if _, err := io.ReadFull(c, in[:n]); err != nil {
			return
		}
		t0 := time.Now()
		bp := s.outPool.Get().(*[]byte)
		buf := *bp
		resp := s.handle(in[:n], client, trTCP, buf[2:2])
		if resp == nil {
			s.outPool.Put(bp)
			return
		}
		_ = c.SetWriteDeadline(time.Now().Add(s.opts.TCPIdleTimeout))
		var err error
		if len(resp) > 0 && &resp[0] == &buf[2] {
			binary.BigEndian.PutUint16(buf, uint16(len(resp)))
			_, err = c.Write(buf[:2+len(resp)])
		} else {
			// The answer outgrew the buffer (a huge static RRset).
			binary.BigEndian.PutUint16(lenBuf[:], uint16(len(resp)))
			if _, err = c.Write(lenBuf[:]); err == nil {
				_, err = c.Write(resp)
			}
		}
		s.outPool.Put(bp)
		if err != nil {
			return
		}
		s.m.common[trTCP].observe(time.Since(t0), 1)
	}
}

// watchNodes rebuilds the view as soon as the node map changes, so the
// query after a change does not pay for it.
func (s *Server) watchNodes() {
	defer s.wg.Done()
	for {
		v := s.view.Load()
		select {
		case <-v.changed:
			s.refreshNodes()
		case <-s.stop:
			return
		}
	}
}

// watchFile polls the database file and reloads when it changed. Polling
// (every few seconds) needs no new dependency and copes with the file being
// replaced by rename, which is how database updaters write it.
func (s *Server) watchFile() {
	defer s.wg.Done()
	if s.opts.GeoIPPath == "" || s.opts.GeoIPPollInterval < 0 {
		return
	}
	t := time.NewTicker(s.opts.GeoIPPollInterval)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		id, err := statFile(s.opts.GeoIPPath)
		if err != nil {
			if err.Error() != lastErr {
				s.log.Warn("dns: GeoIP database not readable; keeping the current index", "err", err)
				lastErr = err.Error()
			}
			continue
		}
		lastErr = ""
		s.statMu.Lock()
		same := id == s.lastStat
		s.statMu.Unlock()
		if same {
			continue
		}
		s.log.Info("dns: GeoIP database changed; rebuilding the index", "path", s.opts.GeoIPPath)
		if err := s.Reload(); err != nil {
			// Don't retry the same broken file every tick; a new write
			// changes its identity and triggers another attempt.
			s.statMu.Lock()
			s.lastStat = id
			s.statMu.Unlock()
		}
	}
}
