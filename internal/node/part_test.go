package node

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/admin"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/testkit"
)

// events records what fake parts are asked to do, in order.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	e.list = append(e.list, s)
	e.mu.Unlock()
}

func (e *events) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list)
}

// only is the events of one kind ("start", "drain", ...), as part names.
func (e *events) only(kind string) []string {
	var out []string
	for _, s := range e.get() {
		if k, name, _ := strings.Cut(s, " "); k == kind {
			out = append(out, name)
		}
	}
	return out
}

// fake is a part that records its calls. The optional hooks make it fail
// or wait.
type fake struct {
	name     string
	ev       *events
	startErr error
	stopErr  error
	start    func(ctx context.Context) error // replaces the plain start
	stop     func()
}

func (f *fake) Name() string   { return f.name }
func (f *fake) Detail() string { return "fake " + f.name }

func (f *fake) Start(ctx context.Context) error {
	f.ev.add("start " + f.name)
	if f.start != nil {
		return f.start(ctx)
	}
	return f.startErr
}

func (f *fake) Stop(context.Context) error {
	f.ev.add("stop " + f.name)
	if f.stop != nil {
		f.stop()
	}
	return f.stopErr
}

// drainer, announcer and reloader add one step of the lifecycle to a fake.
type drainer struct {
	*fake
	drain func(ctx context.Context) error
}

func (d *drainer) Drain(ctx context.Context) error {
	d.ev.add("drain " + d.name)
	if d.drain != nil {
		return d.drain(ctx)
	}
	return nil
}

type announcer struct{ *fake }

func (a *announcer) Announce(context.Context) error { a.ev.add("announce " + a.name); return nil }

type reloader struct{ *fake }

func (r *reloader) Reload() error { r.ev.add("reload " + r.name); return nil }

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestPartsStartInOrderAndStopInReverse(t *testing.T) {
	ev := &events{}
	parts := []Part{
		&fake{name: "a", ev: ev},
		&announcer{&fake{name: "b", ev: ev}},
		&drainer{fake: &fake{name: "c", ev: ev}},
		&fake{name: "d", ev: ev},
		&drainer{fake: &fake{name: "e", ev: ev}},
	}
	lc := &lifecycle{parts: parts, log: quiet()}
	if err := lc.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := ev.only("start"); !slices.Equal(got, []string{"a", "b", "c", "d", "e"}) {
		t.Errorf("started %v", got)
	}
	if err := lc.shutdown(time.Minute); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"start a", "start b", "start c", "start d", "start e",
		"announce b", // before any drain
		"drain e", "drain c",
		"stop e", "stop d", "stop c", "stop b", "stop a",
	}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
}

// TestFailedStartStopsInReverse: a part that fails to start makes the
// node take down the parts already started, in reverse; the failed part
// is stopped too (first, being the last one in), the parts after it are
// neither started nor stopped.
func TestFailedStartStopsInReverse(t *testing.T) {
	ev := &events{}
	boom := errors.New("boom")
	parts := []Part{
		&announcer{&fake{name: "a", ev: ev}},
		&drainer{fake: &fake{name: "b", ev: ev}},
		&fake{name: "c", ev: ev, startErr: boom},
		&drainer{fake: &fake{name: "d", ev: ev}},
		&fake{name: "e", ev: ev},
	}
	lc := &lifecycle{parts: parts, log: quiet()}
	err := lc.start(context.Background())
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "start c") {
		t.Fatalf("start: %v; want boom, naming c", err)
	}
	if err := lc.shutdown(time.Minute); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"start a", "start b", "start c",
		"announce a", "drain b",
		"stop c", "stop b", "stop a",
	}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
}

// TestStartContext: ctx bounds the start: a part still starting when it
// ends fails, and is stopped with the ones before it.
func TestStartContext(t *testing.T) {
	ev := &events{}
	ctx, cancel := context.WithCancel(context.Background())
	parts := []Part{
		&fake{name: "a", ev: ev},
		&fake{name: "slow", ev: ev, start: func(ctx context.Context) error {
			cancel()
			<-ctx.Done()
			return ctx.Err()
		}},
		&fake{name: "c", ev: ev},
	}
	lc := &lifecycle{parts: parts, log: quiet()}
	if err := lc.start(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("start: %v", err)
	}
	if err := lc.shutdown(time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, want := ev.get(), []string{"start a", "start slow", "stop slow", "stop a"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestStopErrorsJoined: every part stops even when some fail to; their
// errors come back together, each naming its part.
func TestStopErrorsJoined(t *testing.T) {
	ev := &events{}
	errA, errC := errors.New("a is stuck"), errors.New("c is stuck")
	parts := []Part{
		&fake{name: "a", ev: ev, stopErr: errA},
		&fake{name: "b", ev: ev},
		&fake{name: "c", ev: ev, stopErr: errC},
	}
	lc := &lifecycle{parts: parts, log: quiet()}
	if err := lc.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	err := lc.shutdown(time.Minute)
	if !errors.Is(err, errA) || !errors.Is(err, errC) {
		t.Fatalf("got %v, want both stop errors", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "stop a: a is stuck") || !strings.Contains(msg, "stop c: c is stuck") {
		t.Errorf("errors do not name their parts: %q", msg)
	}
	if got := ev.only("stop"); !slices.Equal(got, []string{"c", "b", "a"}) {
		t.Errorf("stopped %v", got)
	}
}

// TestDrainTimeoutIsShared: the drainers share one drain timeout; one that
// takes all of it does not keep the others from being asked, nor the
// parts from stopping.
func TestDrainTimeoutIsShared(t *testing.T) {
	ev := &events{}
	var deadlines []bool
	hog := func(ctx context.Context) error {
		_, ok := ctx.Deadline()
		deadlines = append(deadlines, ok)
		<-ctx.Done()
		return ctx.Err()
	}
	parts := []Part{
		&drainer{fake: &fake{name: "a", ev: ev}, drain: hog},
		&drainer{fake: &fake{name: "b", ev: ev}, drain: hog},
	}
	lc := &lifecycle{parts: parts, log: quiet()}
	if err := lc.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := lc.shutdown(50 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if got, want := ev.get(), []string{"start a", "start b", "drain b", "drain a", "stop b", "stop a"}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if !slices.Equal(deadlines, []bool{true, true}) {
		t.Errorf("drain contexts without the drain timeout: %v", deadlines)
	}
}

func TestReloadInStartOrder(t *testing.T) {
	ev := &events{}
	parts := []Part{
		&reloader{&fake{name: "a", ev: ev}},
		&fake{name: "b", ev: ev},
		&reloader{&fake{name: "c", ev: ev}},
	}
	lc := &lifecycle{parts: parts, log: quiet()}
	if err := lc.start(context.Background()); err != nil {
		t.Fatal(err)
	}
	lc.reload()
	if got := ev.only("reload"); !slices.Equal(got, []string{"a", "c"}) {
		t.Errorf("reloaded %v", got)
	}
}

// testNode is a Node around fake parts, with a real admin listener.
func testNode(t *testing.T, parts ...Part) (*Node, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := admin.New(ln, reg, "token", quiet())
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Node.DrainTimeout = time.Minute
	n := &Node{cfg: cfg, log: quiet(), reg: reg, adminLn: ln, admin: srv, failures: make(chan error, 1)}
	ap := &adminPart{srv: srv, serving: serving{failures: n.failures}}
	n.parts = append([]Part{ap}, parts...)
	return n, "http://" + ln.Addr().String()
}

func readyz(url string) (int, error) {
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestRunSignals: SIGHUP reloads, SIGTERM takes the node down: /readyz
// turns 503 first, then the parts announce, drain and stop, and Run
// returns nil even though a part did not stop cleanly.
func TestRunSignals(t *testing.T) {
	ev := &events{}
	var url string
	var readyAtAnnounce int
	mesh := &fake{name: "mesh", ev: ev}
	n, url := testNode(t,
		&announcingProbe{fake: mesh, probe: func() { readyAtAnnounce, _ = readyz(url) }},
		&reloader{&fake{name: "dns", ev: ev}},
		&drainer{fake: &fake{name: "pubsub", ev: ev, stopErr: errors.New("stuck")}},
	)
	signals := make(chan os.Signal, 2)
	done := make(chan error, 1)
	go func() { done <- n.Run(context.Background(), signals) }()
	testkit.WaitFor(t, time.Minute, "the condition", func() bool { code, _ := readyz(url); return code == http.StatusOK })
	signals <- syscall.SIGHUP
	testkit.WaitFor(t, time.Minute, "the condition", func() bool { return len(ev.only("reload")) == 1 })
	signals <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Run did not return")
	}
	want := []string{"start mesh", "start dns", "start pubsub", "reload dns", "announce mesh", "drain pubsub",
		"stop pubsub", "stop dns", "stop mesh"}
	if got := ev.get(); !slices.Equal(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	if readyAtAnnounce != http.StatusServiceUnavailable {
		t.Errorf("/readyz while the mesh announced draining: %d, want 503", readyAtAnnounce)
	}
	if _, err := readyz(url); err == nil {
		t.Error("the admin listener still answers after Run")
	}
}

// TestRunServeFailure: a part whose server fails stops the node; Run
// returns that failure and the Stop errors.
func TestRunServeFailure(t *testing.T) {
	ev := &events{}
	serveErr := errors.New("listener broke")
	stopErr := errors.New("stuck")
	var s serving
	p := &fake{name: "server", ev: ev, stopErr: stopErr, stop: func() {}}
	n, _ := testNode(t, p)
	s.failures = n.failures
	p.start = func(context.Context) error {
		s.start("server", func() error { return serveErr })
		return nil
	}
	err := n.Run(context.Background(), nil)
	if !errors.Is(err, serveErr) || !errors.Is(err, stopErr) || !strings.Contains(err.Error(), "server: listener broke") {
		t.Errorf("Run: %v; want the serve failure and the stop error", err)
	}
	if err := s.wait(context.Background()); err != nil {
		t.Error(err)
	}
}

type announcingProbe struct {
	*fake
	probe func()
}

func (a *announcingProbe) Announce(context.Context) error {
	a.probe()
	a.ev.add("announce " + a.name)
	return nil
}

// TestStartOrderDeclared: startOrder places every part New can build, in
// the declared order, and skips those the config leaves out.
func TestStartOrderDeclared(t *testing.T) {
	all := &built{
		https: &httpsPart{}, admin: &adminPart{}, mesh: &meshPart{}, load: &loadReporter{}, rum: &rumPart{}, dns: &dnsPart{},
		mongoDB: &embeddedDB{}, mongo: &mongoPart{}, cdn: &cdnPart{}, cdnPeer: &peerFillPart{}, purges: &purgeLog{}, pubsub: &pubsubPart{}, status: &statusPart{},
		demo: &demoPart{}, fleetStorage: &fleetStorage{}, tickets: &ticketsPart{}, acme: &acmePart{},
		readiness: &readinessReporter{},
	}
	v := reflect.ValueOf(all).Elem()
	for i := range v.NumField() {
		if v.Field(i).IsNil() {
			t.Fatalf("the test leaves built.%s out", v.Type().Field(i).Name)
		}
	}
	got := partNames(startOrder(all))
	want := []string{"https", "admin", "mesh", "load", "measured", "dns", "mongo-db", "mongo", "cdn", "cdn-peer", "cdn-purges", "pubsub", "status", "demo",
		"fleet-storage", "session-tickets", "acme", "readiness"}
	if !slices.Equal(got, want) {
		t.Errorf("all parts: got %v\nwant %v", got, want)
	}
	if len(got) != v.NumField() {
		t.Errorf("startOrder places %d parts, built has %d", len(got), v.NumField())
	}
	least := &built{https: &httpsPart{}, admin: &adminPart{}, fleetStorage: &fleetStorage{}, tickets: &ticketsPart{}}
	if got, want := partNames(startOrder(least)), []string{"https", "admin", "fleet-storage", "session-tickets"}; !slices.Equal(got, want) {
		t.Errorf("fewest parts: got %v, want %v", got, want)
	}
}

// TestStartedHandles: a part that needs another part's running state says
// so when that part has not started: the start order is wrong.
func TestStartedHandles(t *testing.T) {
	cfg := config.Default()
	db := &embeddedDB{dir: t.TempDir()}
	mp := &mongoPart{cfg: &cfg, db: db, log: quiet()}
	if err := mp.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "mongo-db) has not started") {
		t.Errorf("mongo before its database: %v", err)
	}
	fs := &fleetStorage{mongo: mp, cfg: &cfg}
	if err := fs.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "(mongo) has not started") {
		t.Errorf("fleet storage before mongo: %v", err)
	}
	// Stop after a failed Start releases what there is, and nothing else.
	if err := errors.Join(mp.Stop(context.Background()), db.Stop(context.Background())); err != nil {
		t.Errorf("stop after a failed start: %v", err)
	}
}

// TestRegisterProcessMetrics: a collector that cannot be registered is an
// error naming it, not a panic.
func TestRegisterProcessMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := registerProcessMetrics(reg, "v1", "n1"); err != nil {
		t.Fatal(err)
	}
	err := registerProcessMetrics(reg, "v1", "n1")
	if err == nil || !strings.Contains(err.Error(), "metrics: register the Go collector") {
		t.Errorf("registering twice: %v", err)
	}
}
