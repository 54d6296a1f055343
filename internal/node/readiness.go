package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// readinessReporter tells the cluster, through this node's mesh metadata,
// whether the node is ready (nodemap.Node.Ready): every node's DNS leaves
// a node that is not out of its dynamic answers while another is ready.
// The node is not ready until every part has started (the reporter starts
// last; the node joins the mesh saying "starting"), nor while a check
// fails: its Mongo replica not synced, or lagging an alive peer by more
// than mongo.max_lag. Draining is said by the mesh itself.
//
// It polls the checks every interval and announces a change of readiness
// at once. A reason that changes while the node stays not ready (the lag
// in seconds grows) is announced at most every reasonEvery: every
// announcement is gossiped to the whole cluster, and the reason is for
// people, the readiness for DNS.
type readinessReporter struct {
	set         func(ctx context.Context, notReady string) error // mesh.SetReadiness
	checks      []func() error
	interval    time.Duration
	reasonEvery time.Duration
	log         *slog.Logger

	stop chan struct{}
	done sync.WaitGroup
}

// Intervals of the readiness reporter.
const (
	readinessInterval    = time.Second
	readinessReasonEvery = 30 * time.Second
	// readinessStarting is what a node says while its parts start.
	readinessStarting = "starting"
)

func newReadinessReporter(set func(context.Context, string) error, checks []func() error, log *slog.Logger) *readinessReporter {
	return &readinessReporter{set: set, checks: checks, interval: readinessInterval, reasonEvery: readinessReasonEvery,
		log: log, stop: make(chan struct{})}
}

func (r *readinessReporter) Name() string { return "readiness" }
func (r *readinessReporter) Detail() string {
	return "tells the cluster every " + r.interval.String() + " whether this node is ready (started, its Mongo replica synced and within mongo.max_lag): DNS prefers ready nodes"
}

// notReady is why the node is not ready now, "" when it is.
func (r *readinessReporter) notReady() string {
	var errs []error
	for _, c := range r.checks {
		if err := c(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err.Error()
	}
	return ""
}

// Start runs the loop; as the last part to start, it also ends the node's
// "starting".
func (r *readinessReporter) Start(context.Context) error {
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		r.run()
	}()
	return nil
}

func (r *readinessReporter) run() {
	said := readinessStarting // what the node joined with
	var saidAt time.Time
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		now := r.notReady()
		flip := (now == "") != (said == "")
		if now != said && (flip || time.Since(saidAt) >= r.reasonEvery) {
			switch {
			case flip && now == "":
				r.log.Info("node ready: DNS everywhere names it again")
			case flip:
				r.log.Warn("node not ready: DNS everywhere leaves it out while another node is ready", "reason", now)
			}
			ctx, cancel := context.WithTimeout(context.Background(), r.interval*5)
			err := r.set(ctx, now)
			cancel()
			// Said even when the announcement was not confirmed: the
			// metadata has changed, and gossip carries it on.
			if err != nil {
				r.log.Debug("readiness announcement not confirmed", "err", err)
			}
			said, saidAt = now, time.Now()
		}
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
	}
}

func (r *readinessReporter) Stop(context.Context) error {
	close(r.stop)
	r.done.Wait()
	return nil
}

// mongoReadiness is the Mongo part's readiness check for the reporter:
// the replicator's, and not ready while it does not run.
func mongoReadiness(p *mongoPart) func() error {
	return func() error {
		r := p.rep.Load()
		if r == nil {
			return errors.New("mongo replication: not running")
		}
		if err := r.Ready(); err != nil {
			return fmt.Errorf("mongo replication: %w", err)
		}
		return nil
	}
}

// buildReadiness builds the reporter when there is a mesh to tell (a node
// without one has a static map in which every node is ready), and makes
// the node join the mesh as "starting".
func (n *Node) buildReadiness(mp *meshPart, mongo *mongoPart) *readinessReporter {
	if mp == nil {
		return nil
	}
	// Before Start, this only sets what the node joins with.
	_ = mp.m.SetReadiness(context.Background(), readinessStarting)
	var checks []func() error
	if mongo != nil {
		checks = append(checks, mongoReadiness(mongo))
	}
	return newReadinessReporter(mp.m.SetReadiness, checks, n.log.With("part", "readiness"))
}
