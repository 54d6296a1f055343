package repl

import (
	"strings"
	"time"

	"github.com/hashicorp/serf/coordinate"

	"github.com/edgenode/edgenode/internal/nodemap"
)

// Membership (senders follow the node map, absent peers are forgotten),
// the cron leader check, and the op log's trimming.

func (n *nodeState) forgotten(after time.Duration) bool {
	return !n.inMap && !n.goneSince.IsZero() && time.Since(n.goneSince) > after
}

// membershipLoop follows the node map: senders for present peers, absence
// times, the cron leader check.
func (r *Replicator) membershipLoop() {
	defer r.wg.Done()
	t := r.opts.Transport
	var warned string
	// The map is also looked at periodically: absences age into
	// forgetting, and the cron leader is judged once membership settled.
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		m, changed := t.Current()
		r.applyMap(m)
		if !time.Now().Before(r.started.Add(10 * time.Second)) {
			warned = r.checkCronLeader(m, warned)
		}
		r.wakeSync()
		select {
		case <-r.ctx.Done():
			r.stopSenders()
			return
		case <-changed:
		case <-tick.C:
		}
	}
}

func (r *Replicator) applyMap(m *nodemap.Map) {
	now := time.Now()
	present := map[string]nodemap.Node{}
	var self *coordinate.Coordinate
	for _, n := range m.Nodes {
		if n.ID != r.opts.NodeID && !n.Self {
			present[n.ID] = n
		} else {
			self = n.Coord
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.coord = self
	for id, mn := range present {
		n := r.node(id)
		n.inMap, n.mapState, n.goneSince = true, mn.State, time.Time{}
		n.coord = mn.Coord
		if r.senders[id] == nil && !r.stopping {
			s := newSender(r, id)
			r.senders[id] = s
			r.wg.Add(1)
			go s.run()
		}
	}
	for id, n := range r.nodes {
		if _, ok := present[id]; ok {
			continue
		}
		if n.inMap || n.goneSince.IsZero() {
			n.inMap, n.goneSince = false, now
		}
		if s := r.senders[id]; s != nil {
			s.stop()
			delete(r.senders, id)
		}
		if n.forgotten(r.opts.ForgetPeerAfter) {
			r.log.Warn("forgetting a node absent from the cluster", "node", id, "absent_for", now.Sub(n.goneSince).Round(time.Second))
			if err := r.core.RemovePeer(id); err != nil {
				r.log.Warn("forgetting peer", "node", id, "err", err)
			}
			delete(r.nodes, id)
		}
	}
}

func (r *Replicator) stopSenders() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.senders {
		s.stop()
	}
}

// checkCronLeader warns (log and metric) when the live cluster has no node,
// or more than one, claiming cron_leader. It returns what it last warned.
func (r *Replicator) checkCronLeader(m *nodemap.Map, warned string) string {
	var leaders []string
	for _, n := range m.Nodes {
		if n.State != nodemap.Dead && n.HasTag(r.opts.CronLeaderTag) {
			leaders = append(leaders, n.ID)
		}
	}
	r.mu.Lock()
	r.leaders = leaders
	r.mu.Unlock()
	r.met.cronLeaders.Set(float64(len(leaders)))
	msg := ""
	switch len(leaders) {
	case 1:
		if warned != "" {
			r.log.Info("exactly one node claims cron_leader again", "node", leaders[0])
		}
		return ""
	case 0:
		msg = "no live node claims cron_leader: jobs that must run once run nowhere"
	default:
		msg = "several live nodes claim cron_leader: jobs that must run once run on each of them"
	}
	key := msg + strings.Join(leaders, ",")
	if key != warned {
		r.log.Warn(msg+" (set node.cron_leader: true on exactly one node)", "claiming", leaders)
	}
	return key
}

// posSample is this node's position in every origin's ops at one time:
// its own last seq and its applied position of the others.
type posSample struct {
	at  time.Time
	pos map[string]uint64
}

// trimLoop trims the op log below what every peer has applied (and outside
// LogRetention: every origin's ops, this node's own and the ones it
// applied, stay at least that long, for initial syncs and relays) and
// forgets long-gone peers.
func (r *Replicator) trimLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.TrimInterval)
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		pos := r.core.AppliedVector()
		pos[r.origin] = r.core.LastSeq()
		r.mu.Lock()
		r.samples = append(r.samples, posSample{now, pos})
		var old map[string]uint64
		cut := 0
		for i, s := range r.samples {
			if now.Sub(s.at) < r.opts.LogRetention {
				break
			}
			old, cut = s.pos, i
		}
		r.samples = r.samples[cut:]
		r.mu.Unlock()
		// Keep what came after the retention window began: an origin
		// absent from the old sample keeps everything.
		keep := make(map[string]uint64, len(pos))
		for origin := range pos {
			keep[origin] = old[origin]
		}
		if r.opts.TrimFloor != nil {
			for origin, f := range r.opts.TrimFloor() {
				if k, ok := keep[origin]; !ok || f < k {
					keep[origin] = f
				}
			}
		}
		for _, s := range r.sendersSnapshot() {
			if err := s.persistAck(); err != nil && r.ctx.Err() == nil {
				r.log.Warn("persisting a peer's position", "peer", s.peer, "err", err)
			}
		}
		if n, err := r.core.TrimBelow(keep); err != nil {
			if r.ctx.Err() == nil {
				r.log.Warn("trimming the op log", "err", err)
			}
		} else if n > 0 {
			r.met.trimmed.Add(float64(n))
		}
	}
}

func (r *Replicator) sendersSnapshot() []*sender {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := make([]*sender, 0, len(r.senders))
	for _, s := range r.senders {
		list = append(list, s)
	}
	return list
}
