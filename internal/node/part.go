package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// A Part is one piece of a node: the HTTPS edge, the admin listener, the
// mesh, DNS, the Mongo layer, ... New builds every part with what it needs
// (its config, the parts it uses, the metrics registry); Run starts them
// one after the other in the order startOrder declares, and takes them
// down in reverse.
//
// A part uses another part only through what it was given when it was
// built: the object itself (a *mesh.Mesh, a *transport.Server), or, for
// what exists only once the other part has started (the embedded
// database's address, the Mongo proxy), a method of that part that says so
// when called too early (see embeddedDB.URI and mongoPart.Proxy). The start
// order makes it never too early.
type Part interface {
	// Name is the part's short name ("https", "mongo"); Detail says for
	// people what it does and where. The log and the landing page show
	// them.
	Name() string
	Detail() string
	// Start brings the part up and returns once it does its job: the parts
	// after it may use it. ctx bounds the start alone: a start still
	// waiting when ctx is done gives up with ctx's error. It never bounds
	// what the part runs afterwards, which lives until Stop.
	Start(ctx context.Context) error
	// Stop releases everything the part holds, within ctx. It is called
	// once, after Start returned, whether Start succeeded or failed half
	// way (like Caddy's Cleanup), so it copes with whatever Start did not
	// get to.
	Stop(ctx context.Context) error
}

// An Announcer tells the world the node is going, before any part drains:
// the mesh marks the node draining, so DNS everywhere stops naming it.
type Announcer interface {
	Announce(ctx context.Context) error
}

// A Drainer stops taking new work and finishes the work in flight before
// it is stopped; Drain returns when that is done or ctx is (the node's
// drain timeout, shared by every part), cutting what is left.
type Drainer interface {
	Drain(ctx context.Context) error
}

// A Reloader rereads its files on SIGHUP; when they do not load it keeps
// its old state and says why.
type Reloader interface {
	Reload() error
}

// stopTimeout bounds each part's Stop.
const stopTimeout = 10 * time.Second

// lifecycle starts parts in order and takes them down in reverse.
type lifecycle struct {
	parts []Part
	log   *slog.Logger

	started int  // parts[:started] have started
	failed  Part // the part whose Start failed; nil if none did
}

// start starts the parts one after the other and stops at the first that
// fails; shutdown then takes down those started, and that one.
func (l *lifecycle) start(ctx context.Context) error {
	for _, p := range l.parts {
		if err := p.Start(ctx); err != nil {
			l.failed = p
			return fmt.Errorf("start %s: %w", p.Name(), err)
		}
		l.started++
		l.log.Info("part started", "part", p.Name(), "detail", p.Detail())
	}
	return nil
}

// shutdown takes down what start brought up. Every started part
// announces, in start order; then the drainers drain in reverse order
// within one drainTimeout; then the failed part and the started ones stop
// in reverse order, each within stopTimeout. Announce and drain problems
// are logged (a drain cut by its timeout is what the timeout is for); the
// Stop errors are logged and returned joined, each naming its part.
func (l *lifecycle) shutdown(drainTimeout time.Duration) error {
	started := l.parts[:l.started]
	drainCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	for _, p := range started {
		if a, ok := p.(Announcer); ok {
			if err := a.Announce(drainCtx); err != nil {
				l.log.Warn("announce", "part", p.Name(), "err", err)
			}
		}
	}
	for i := len(started) - 1; i >= 0; i-- {
		if d, ok := started[i].(Drainer); ok {
			if err := d.Drain(drainCtx); err != nil {
				l.log.Warn("drain did not finish in time; connections cut", "part", started[i].Name(), "err", err)
			}
		}
	}
	stopping := started
	if l.failed != nil {
		stopping = append(stopping[:len(stopping):len(stopping)], l.failed)
	}
	var errs []error
	for i := len(stopping) - 1; i >= 0; i-- {
		p := stopping[i]
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		if err := p.Stop(ctx); err != nil {
			l.log.Warn("stop", "part", p.Name(), "err", err)
			errs = append(errs, fmt.Errorf("stop %s: %w", p.Name(), err))
		}
		cancel()
	}
	return errors.Join(errs...)
}

// reload reloads the started parts that reload, in start order.
func (l *lifecycle) reload() {
	l.log.Info("reloading")
	for _, p := range l.parts[:l.started] {
		r, ok := p.(Reloader)
		if !ok {
			continue
		}
		if err := r.Reload(); err != nil {
			l.log.Error("reload failed; the part keeps its old state", "part", p.Name(), "err", err)
		} else {
			l.log.Info("reloaded", "part", p.Name())
		}
	}
}

// serving runs a part's blocking serve function (an HTTP server's Serve)
// on a goroutine the part owns from Start until Stop. Serve returning an
// error is a failure of the node: it goes to failures, which Run watches
// (and nobody reads once the node is stopping).
type serving struct {
	failures chan<- error // buffered, shared by the node's serving parts
	done     chan struct{}
}

func (s *serving) start(name string, serve func() error) {
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := serve(); err != nil {
			select {
			case s.failures <- fmt.Errorf("%s: %w", name, err):
			default: // another part failed first: one failure stops the node
			}
		}
	}()
}

// wait returns once serve has returned (the server was shut down), or
// with an error when ctx is done first.
func (s *serving) wait(ctx context.Context) error {
	if s.done == nil {
		return nil
	}
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("still serving: %w", ctx.Err())
	}
}

// opt is p as a Part, or nil when p is nil: a part the config leaves out.
// (A nil pointer in a Part would be a Part that is not nil.)
func opt[P interface {
	*T
	Part
}, T any](p P) Part {
	if p == nil {
		return nil
	}
	return p
}
