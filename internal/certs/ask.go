package certs

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
)

// AskOptions configure the on-demand check: before a certificate is
// ordered for a name seen in SNI, the app server is asked whether the name
// is one of its customers' (GET URL?domain=NAME; 200 means yes, anything
// else no). Answers are cached, and asks are limited per client address and
// in total, so a scanner sending random names can neither flood the app
// server nor make the leader burn the CA's rate limits.
type AskOptions struct {
	URL       string
	Timeout   time.Duration // per ask; default 5s
	AllowTTL  time.Duration // how long a yes is trusted; default 1h
	DenyTTL   time.Duration // how long a no is trusted; default 10m
	CacheSize int           // names remembered; default 10000
	// PerClient asks per client address per Window (default 5 per minute);
	// Global asks per Window in all (default 60).
	PerClient int
	Global    int
	Window    time.Duration
	Client    *http.Client // default: a client with Timeout
}

func (o *AskOptions) setDefaults() {
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.AllowTTL <= 0 {
		o.AllowTTL = time.Hour
	}
	if o.DenyTTL <= 0 {
		o.DenyTTL = 10 * time.Minute
	}
	if o.CacheSize <= 0 {
		o.CacheSize = 10000
	}
	if o.PerClient <= 0 {
		o.PerClient = 5
	}
	if o.Global <= 0 {
		o.Global = 60
	}
	if o.Window <= 0 {
		o.Window = time.Minute
	}
	if o.Client == nil {
		o.Client = &http.Client{Timeout: o.Timeout}
	}
}

// Decision results, also the label values of the decisions metric.
const (
	DecisionAllowed     = "allowed"      // the app server said yes (now or cached)
	DecisionRefused     = "refused"      // the app server said no (now or cached)
	DecisionInvalid     = "invalid"      // not a name we would ever certify
	DecisionRateLimited = "rate_limited" // too many asks from this client or in all
	DecisionError       = "error"        // the app server could not be asked
)

// Asker decides whether an on-demand name may get a certificate.
type Asker struct {
	opts    AskOptions
	answers *expirable.LRU[string, bool] // allowed names; refused ones live in denied
	denied  *expirable.LRU[string, struct{}]

	mu       sync.Mutex
	clients  map[netip.Addr]int // asks in the current window, per client
	total    int
	windowAt time.Time
	inflight map[string]*askCall
	now      func() time.Time
}

type askCall struct {
	done    chan struct{}
	allowed bool
	err     error
}

// NewAsker validates opts.URL and applies the defaults.
func NewAsker(opts AskOptions) (*Asker, error) {
	u, err := url.Parse(opts.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("on-demand ask URL %q: want an http(s) URL", opts.URL)
	}
	opts.setDefaults()
	return &Asker{
		opts:     opts,
		answers:  expirable.NewLRU[string, bool](opts.CacheSize, nil, opts.AllowTTL),
		denied:   expirable.NewLRU[string, struct{}](opts.CacheSize, nil, opts.DenyTTL),
		clients:  map[netip.Addr]int{},
		inflight: map[string]*askCall{},
		now:      time.Now,
	}, nil
}

// Decide answers for name (normalized) requested by client. Cached answers
// cost nothing; a new ask counts against the client's and the global
// budget. Concurrent decisions on one name share one ask.
func (a *Asker) Decide(ctx context.Context, name string, client netip.Addr) string {
	if ValidName(name) != nil {
		return DecisionInvalid
	}
	if _, ok := a.answers.Get(name); ok {
		return DecisionAllowed
	}
	if _, ok := a.denied.Get(name); ok {
		return DecisionRefused
	}
	a.mu.Lock()
	if c, ok := a.inflight[name]; ok {
		a.mu.Unlock()
		return a.wait(ctx, c)
	}
	if !a.takeBudgetLocked(client) {
		a.mu.Unlock()
		return DecisionRateLimited
	}
	c := &askCall{done: make(chan struct{})}
	a.inflight[name] = c
	a.mu.Unlock()

	// The ask runs on its own deadline, not the handshake's: its answer is
	// cached for everyone even if this client gives up.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.Timeout)
	c.allowed, c.err = a.ask(actx, name)
	cancel()
	if c.err == nil {
		if c.allowed {
			a.answers.Add(name, true)
		} else {
			a.denied.Add(name, struct{}{})
		}
	}
	a.mu.Lock()
	delete(a.inflight, name)
	a.mu.Unlock()
	close(c.done)
	return a.wait(ctx, c)
}

func (a *Asker) wait(ctx context.Context, c *askCall) string {
	select {
	case <-c.done:
	case <-ctx.Done():
		return DecisionError
	}
	switch {
	case c.err != nil:
		return DecisionError
	case c.allowed:
		return DecisionAllowed
	default:
		return DecisionRefused
	}
}

// takeBudgetLocked counts one ask in fixed windows; the per-client table
// is dropped with each window, so its size is bounded by Global.
func (a *Asker) takeBudgetLocked(client netip.Addr) bool {
	now := a.now()
	if now.Sub(a.windowAt) >= a.opts.Window {
		a.windowAt, a.total = now, 0
		clear(a.clients)
	}
	if a.total >= a.opts.Global || a.clients[client] >= a.opts.PerClient {
		return false
	}
	a.total++
	a.clients[client]++
	return true
}

func (a *Asker) ask(ctx context.Context, name string) (bool, error) {
	u, _ := url.Parse(a.opts.URL)
	q := u.Query()
	q.Set("domain", name)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return false, err
	}
	resp, err := a.opts.Client.Do(req)
	if err != nil {
		return false, fmt.Errorf("ask %s: %w", name, err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		// The app server is unwell: not an answer, try again later.
		return false, fmt.Errorf("ask %s: status %d", name, resp.StatusCode)
	}
	return resp.StatusCode == http.StatusOK, nil
}
