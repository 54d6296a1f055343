package web

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/nodemap"
	"github.com/edgenode/edgenode/internal/rum"
)

// StatusTopic is the mesh topic on which every node shares its Figures with
// its peers, every StatusOptions.Interval.
const StatusTopic = "status"

// Mesh is what the status page needs from the cluster mesh (internal/mesh
// satisfies it). Broadcast and the handler must not block.
type Mesh interface {
	Broadcast(topic string, msg []byte)
	Handle(topic string, h func(from string, msg []byte))
}

// StatusOptions configure the status page.
type StatusOptions struct {
	NodeID  string
	Version string
	// Nodes is the live node map (the mesh, or a static list).
	Nodes nodemap.Source
	// Gatherer is the node's metrics registry; the page's figures are read
	// from it, so they are the numbers /metrics shows.
	Gatherer prometheus.Gatherer
	// Mesh carries figures between nodes; nil for a single node.
	Mesh Mesh
	// Parts names the node's running parts ("https", "dns", "cdn",
	// "pubsub", ...): their figures show as 0 before their first event
	// rather than as "not running".
	Parts []string
	// Interval is how often figures are computed, shared with peers and
	// pushed to viewers. Default 2s. A change of the node map is pushed at
	// once, whatever the interval.
	Interval time.Duration
	// MaxViewers bounds the open event streams. Default 64.
	MaxViewers int
	// Measured lists the client networks with a measured preference
	// (rum.Table.Preferences); nil when measuring is off.
	Measured func() []rum.Preference
}

// Defaults of StatusOptions.
const (
	DefaultStatusInterval = 2 * time.Second
	DefaultMaxViewers     = 64
)

// Status serves the status page (/status) and its live event stream
// (/status/events, Server-Sent Events) on the admin listener.
//
// One goroutine (run) owns the figures: every Interval it reads the
// registry, computes this node's Figures, sends them to the peers and
// publishes a new snapshot; it also publishes one as soon as the node map
// changes. A snapshot is immutable JSON; each viewer's handler writes the
// newest one whenever it changes. Nothing is computed per viewer.
type Status struct {
	opts StatusOptions
	log  *slog.Logger

	viewers     prometheus.Gauge
	peerBad     prometheus.Counter
	openViewers atomic.Int64

	mu    sync.Mutex
	cur   *view
	peers map[string]peerFigures // by the mesh's sender id
	own   *Figures

	hist  history // owned by run
	parts map[string]bool

	// stopped (under mu) is set before stop is closed: no goroutine joins
	// wg once Stop may be waiting on it.
	stopped bool
	started bool
	stop    chan struct{}
	wg      sync.WaitGroup // run and every viewer
}

type peerFigures struct {
	f   *Figures
	got time.Time // receipt time: peers' clocks are not trusted for age
}

// view is one published snapshot; next is closed when a newer one replaces it.
type view struct {
	json []byte
	next chan struct{}
}

// snapshot is what the page renders: the node map and every node's figures.
type snapshot struct {
	Node       string         `json:"node"`
	Version    string         `json:"version"`
	MapVersion uint64         `json:"map_version"`
	At         int64          `json:"at"` // unix ms
	IntervalMS int64          `json:"interval_ms"`
	Members    []statusMember `json:"members"`
	// Measured is the measured preference per client network (at most
	// maxMeasuredShown, most samples first).
	Measured []rum.Preference `json:"measured,omitempty"`
}

// maxMeasuredShown bounds the networks the page lists.
const maxMeasuredShown = 50

type statusMember struct {
	ID            string   `json:"id"`
	Region        string   `json:"region,omitempty"`
	Lat           float64  `json:"lat"`
	Lon           float64  `json:"lon"`
	State         string   `json:"state"`
	Load          float64  `json:"load"`
	Self          bool     `json:"self,omitempty"`
	BinaryVersion string   `json:"binary_version,omitempty"`
	ConfigVersion string   `json:"config_version,omitempty"`
	Verified      bool     `json:"verified"`             // DNS may name it (nodemap.Node.Verified)
	Unverified    string   `json:"unverified,omitempty"` // why not
	Ready         bool     `json:"ready"`                // DNS prefers it (nodemap.Node.Ready)
	NotReady      string   `json:"not_ready,omitempty"`  // why not
	Figures       *Figures `json:"figures,omitempty"`
	AgeMS         int64    `json:"age_ms,omitempty"` // how old the figures are, as received
	// RTTMS is the round trip between this node and the member estimated
	// from their network coordinates; absent when either has none.
	RTTMS *float64 `json:"rtt_ms,omitempty"`
}

// NewStatus builds the status page. It registers its mesh handler at once;
// Start begins computing figures.
func NewStatus(opts StatusOptions, log *slog.Logger, reg prometheus.Registerer) (*Status, error) {
	if opts.Nodes == nil {
		return nil, errors.New("status: no node map")
	}
	if opts.Gatherer == nil {
		return nil, errors.New("status: no metrics gatherer")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultStatusInterval
	}
	if opts.MaxViewers <= 0 {
		opts.MaxViewers = DefaultMaxViewers
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Status{
		opts:  opts,
		log:   log,
		peers: map[string]peerFigures{},
		parts: map[string]bool{},
		stop:  make(chan struct{}),
		viewers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_status_viewers",
			Help: "Open /status/events streams on the admin listener."}),
		peerBad: prometheus.NewCounter(prometheus.CounterOpts{Name: "edgenode_status_peer_figures_bad_total",
			Help: "Figures from peers that could not be decoded or were out of bounds (dropped)."}),
	}
	if reg != nil {
		if err := reg.Register(s.viewers); err != nil {
			return nil, fmt.Errorf("status: metrics: %w", err)
		}
		if err := reg.Register(s.peerBad); err != nil {
			return nil, fmt.Errorf("status: metrics: %w", err)
		}
	}
	for _, p := range opts.Parts {
		s.parts[p] = true
	}
	s.publish(time.Now())
	if opts.Mesh != nil {
		opts.Mesh.Handle(StatusTopic, s.onPeer)
	}
	return s, nil
}

// onPeer stores a peer's figures; it runs on the mesh's goroutine and only
// takes the lock briefly.
func (s *Status) onPeer(from string, msg []byte) {
	f, err := decodeFigures(msg)
	if err != nil || !validPeerID(from) || from == s.opts.NodeID {
		s.peerBad.Inc()
		return
	}
	s.mu.Lock()
	s.peers[from] = peerFigures{f: f, got: time.Now()}
	s.mu.Unlock()
}

// Start begins the figures loop. It returns at once.
func (s *Status) Start(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("status: start after stop")
	}
	if !s.started {
		s.started = true
		s.wg.Add(1)
		go s.run()
	}
	return nil
}

// join counts a goroutine in wg unless Stop has begun.
func (s *Status) join() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return false
	}
	s.wg.Add(1)
	return true
}

// Stop ends the loop and every open event stream, and waits for them
// (within ctx).
func (s *Status) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.stop)
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("status: stop: %w", ctx.Err())
	}
}

func (s *Status) run() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	_, changed := s.opts.Nodes.Current()
	s.tick(time.Now())
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.tick(now)
		case <-changed:
			_, changed = s.opts.Nodes.Current()
			s.publish(time.Now())
		}
	}
}

// tick samples the registry, shares this node's figures and publishes.
func (s *Status) tick(now time.Time) {
	fams, err := s.opts.Gatherer.Gather()
	if err != nil && len(fams) == 0 {
		s.log.Warn("status: cannot read metrics", "err", err)
	}
	s.hist.add(takeSample(fams, now, s.parts))
	f := s.hist.figures()
	s.mu.Lock()
	s.own = f
	s.mu.Unlock()
	if s.opts.Mesh != nil {
		if b, err := json.Marshal(f); err == nil {
			s.opts.Mesh.Broadcast(StatusTopic, b)
		}
	}
	s.publish(now)
}

// publish builds a snapshot from the current map and figures and wakes
// every viewer.
func (s *Status) publish(now time.Time) {
	m, _ := s.opts.Nodes.Current()
	snap := snapshot{
		Node: s.opts.NodeID, Version: s.opts.Version, MapVersion: m.Version, At: now.UnixMilli(),
		IntervalMS: s.opts.Interval.Milliseconds(), Members: make([]statusMember, 0, len(m.Nodes)),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	inMap := make(map[string]bool, len(m.Nodes))
	var self *nodemap.Node
	for i := range m.Nodes {
		if m.Nodes[i].Self {
			self = &m.Nodes[i]
		}
	}
	for _, n := range m.Nodes {
		inMap[n.ID] = true
		sm := statusMember{
			ID: n.ID, Region: n.Region, Lat: n.Lat, Lon: n.Lon, State: n.State.String(), Load: n.Load,
			Self: n.Self, BinaryVersion: n.BinaryVersion, ConfigVersion: n.ConfigVersion,
			Verified: n.Verified, Unverified: n.Unverified, Ready: n.Ready, NotReady: n.NotReady,
		}
		if self != nil && !n.Self {
			if d, ok := self.RTT(&n); ok {
				ms := float64(d.Microseconds()) / 1000
				sm.RTTMS = &ms
			}
		}
		if n.Self || n.ID == s.opts.NodeID {
			sm.Figures = s.own
		} else if pf, ok := s.peers[n.ID]; ok {
			sm.Figures = pf.f
			sm.AgeMS = now.Sub(pf.got).Milliseconds()
		}
		snap.Members = append(snap.Members, sm)
	}
	// Forget the figures of nodes that left the map.
	for id := range s.peers {
		if !inMap[id] {
			delete(s.peers, id)
		}
	}
	if s.opts.Measured != nil {
		snap.Measured = topMeasured(s.opts.Measured(), maxMeasuredShown)
	}
	b, err := json.Marshal(snap)
	if err != nil { // cannot happen: plain types, finite numbers
		s.log.Error("status: snapshot", "err", err)
		return
	}
	old := s.cur
	s.cur = &view{json: b, next: make(chan struct{})}
	if old != nil {
		close(old.next)
	}
}

func (s *Status) current() *view {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Routes are the admin listener's routes.
func (s *Status) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /status":        http.HandlerFunc(s.servePage),
		"GET /status/events": http.HandlerFunc(s.serveEvents),
	}
}

var statusTmpl = template.Must(template.New("status.html").Funcs(template.FuncMap{
	// The snapshot is JSON from json.Marshal, which escapes <, > and &:
	// safe inside a script element as it is.
	"rawJSON": func(b []byte) template.JS { return template.JS(b) },
}).ParseFS(assets, "assets/status.html"))

// landPath is the world outline (see landgen), drawn in the projection
// x = lon+180, y = 90-lat.
var landPath = func() string {
	b, err := assets.ReadFile("assets/land.path")
	if err != nil {
		panic(err)
	}
	return strings.TrimSpace(string(b))
}()

func (s *Status) servePage(w http.ResponseWriter, r *http.Request) {
	v := s.current()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	// Everything is inline: the page works offline and asks nothing of
	// anyone but this node.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
	if err := statusTmpl.Execute(w, struct {
		Node, Version string
		Land          string
		Snapshot      []byte
	}{s.opts.NodeID, s.opts.Version, landPath, v.json}); err != nil {
		s.log.Debug("status: page", "err", err)
	}
}

func (s *Status) serveEvents(w http.ResponseWriter, r *http.Request) {
	if n := s.openViewers.Add(1); n > int64(s.opts.MaxViewers) {
		s.openViewers.Add(-1)
		w.Header().Set("Retry-After", "5")
		http.Error(w, "too many status viewers", http.StatusServiceUnavailable)
		return
	}
	defer s.openViewers.Add(-1)
	if !s.join() {
		http.Error(w, "stopping", http.StatusServiceUnavailable)
		return
	}
	defer s.wg.Done()
	s.viewers.Inc()
	defer s.viewers.Dec()

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		// A viewer that does not read is dropped, never waited for.
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write([]byte("retry: 2000\n\n")) {
		return
	}
	var buf []byte
	for v := s.current(); ; {
		buf = append(buf[:0], "data: "...)
		buf = append(buf, v.json...)
		buf = append(buf, "\n\n"...)
		if !write(buf) {
			return
		}
		select {
		case <-v.next:
			v = s.current()
		case <-r.Context().Done():
			return
		case <-s.stop:
			return
		}
	}
}

// topMeasured returns the n networks with the most samples (the list is
// the table's, not to be modified: sorted in a copy).
func topMeasured(ps []rum.Preference, n int) []rum.Preference {
	if len(ps) <= n {
		return ps
	}
	weight := func(p rum.Preference) float64 {
		w := 0.0
		for _, x := range p.Nodes {
			w += x.Samples
		}
		return w
	}
	out := slices.Clone(ps)
	slices.SortStableFunc(out, func(a, b rum.Preference) int { return cmp.Compare(weight(b), weight(a)) })
	return out[:n]
}
