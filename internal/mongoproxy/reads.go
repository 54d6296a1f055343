package mongoproxy

import (
	"context"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/tag"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/description"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// Reads on secondaries. A read whose $readPreference allows a secondary
// (secondaryPreferred, secondary, nearest; drivers send it to a
// replica-set member for every mode but primary) may be served by an
// upstream secondary: a PoP's hot replica takes read load off its primary.
//
// The client authenticated on its own upstream socket, to the primary,
// and a SCRAM conversation cannot be replayed to another member. So a
// read sent to a secondary goes over a connection of the proxy's own: a
// pool of the official driver's (its topology package: server discovery,
// TLS, SRV, authentication with the URI's credentials), from which one
// connection is taken per command and given back. The proxy then acts
// for the client with its own credentials, as it does for captured
// writes, and checks the client the same way first: when the database
// enforces authentication, the client must be authenticated and hold the
// find privilege on the namespace (privileges.go); an aggregate that reads
// or writes other namespaces ($lookup, $graphLookup, $unionWith, $facet,
// $out, $merge) stays on the client's own connection, where the database
// judges it.
//
// Cursors: a cursor lives on the member that opened it, and belongs there
// to the proxy's user, so the connection remembers the cursors it opened
// on a secondary and sends their getMore and killCursors there too.
// Sessions: lsid and $clusterTime pass through; the member gossips the
// set's cluster time, so causally consistent reads (afterClusterTime)
// work across members. A read in a transaction stays on the primary.
//
// Anything that fails before the read reached a secondary (no eligible
// secondary, the pool cannot connect) is served by the primary, as
// secondaryPreferred and nearest allow; mode secondary gets error 133.
// Tag sets are honoured; maxStalenessSeconds is not (every eligible
// secondary is taken as fresh enough).

// secondaryReadTimeout bounds one command on a secondary.
const secondaryReadTimeout = 2 * time.Minute

// openReadPool starts the driver's topology (and its pools) for reads on
// secondaries, with the upstream URI's options.
func openReadPool(uri string) (*topology.Topology, error) {
	copts := options.Client().ApplyURI(uri).SetAppName("edgenode-mongoproxy-reads")
	cfg, err := topology.NewConfig(copts, nil)
	if err != nil {
		return nil, fmt.Errorf("mongoproxy: read pool: %w", err)
	}
	t, err := topology.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("mongoproxy: read pool: %w", err)
	}
	if err := t.Connect(); err != nil {
		return nil, fmt.Errorf("mongoproxy: read pool: %w", err)
	}
	return t, nil
}

// readPreference is a command's $readPreference mode and tag sets ("" when
// it has none).
func readPreference(body bson.Raw) (mode string, tagSets []tag.Set) {
	rp, err := body.LookupErr("$readPreference")
	if err != nil || rp.Type != bson.TypeEmbeddedDocument {
		return "", nil
	}
	mode, _ = bson.Raw(rp.Value).Lookup("mode").StringValueOK()
	if ts, ok := bson.Raw(rp.Value).Lookup("tags").ArrayOK(); ok {
		vals, _ := ts.Values()
		for _, v := range vals {
			d, ok := v.DocumentOK()
			if !ok {
				continue
			}
			var set tag.Set
			elems, _ := d.Elements()
			for _, e := range elems {
				if s, ok := e.Value().StringValueOK(); ok {
					set = append(set, tag.Tag{Name: e.Key(), Value: s})
				}
			}
			tagSets = append(tagSets, set)
		}
	}
	return mode, tagSets
}

// pickSecondary chooses the member a read with this mode goes to: the
// eligible secondary (nearest: or the primary) with the lowest round trip
// time. ok false: the primary (the client's own connection) serves it.
func pickSecondary(d description.Topology, mode string, tagSets []tag.Set) (s description.Server, ok bool) {
	var best *description.Server
	for i := range d.Servers {
		srv := &d.Servers[i]
		switch {
		case srv.Kind == description.ServerKindRSSecondary:
		case srv.Kind == description.ServerKindRSPrimary && mode == "nearest":
		default:
			continue
		}
		if len(tagSets) > 0 {
			match := false
			for _, ts := range tagSets {
				if srv.Tags.ContainsAll(ts) {
					match = true
					break
				}
			}
			if !match {
				continue
			}
		}
		if best == nil || srv.AverageRTT < best.AverageRTT {
			best = srv
		}
	}
	if best == nil || best.Kind == description.ServerKindRSPrimary {
		return description.Server{}, false
	}
	return *best, true
}

// secondaryStages are the aggregation stages that name another namespace
// (or write): such a pipeline is not run with the proxy's credentials.
var secondaryStages = map[string]bool{"$lookup": true, "$graphLookup": true, "$unionWith": true, "$facet": true, "$out": true, "$merge": true}

func otherNamespaces(body bson.Raw) bool {
	pl, ok := body.Lookup("pipeline").ArrayOK()
	if !ok {
		return false
	}
	stages, _ := pl.Values()
	for _, st := range stages {
		d, ok := st.DocumentOK()
		if !ok {
			continue
		}
		if first, err := d.IndexErr(0); err == nil && secondaryStages[first.Key()] {
			return true
		}
	}
	return false
}

// cursorIDs are the cursor ids a getMore or killCursors names.
func cursorIDs(cmd *command, lower string) []int64 {
	switch lower {
	case "getmore":
		if id, ok := cmd.body.Lookup(cmd.name).Int64OK(); ok {
			return []int64{id}
		}
	case "killcursors":
		arr, ok := cmd.body.Lookup("cursors").ArrayOK()
		if !ok {
			return nil
		}
		vals, _ := arr.Values()
		var ids []int64
		for _, v := range vals {
			if id, ok := v.Int64OK(); ok {
				ids = append(ids, id)
			}
		}
		return ids
	}
	return nil
}

// dispatchRead sends a read to a secondary when its read preference allows
// and one is eligible, and a getMore/killCursors to the secondary that owns
// the cursor (ok false: forward as usual).
func (p *Proxy) dispatchRead(ctx context.Context, cmd *command, lower string, c *clientConn) (dispatched, bool) {
	if p.reads == nil {
		return dispatched{}, false
	}
	switch lower {
	case "getmore", "killcursors":
		for _, id := range cursorIDs(cmd, lower) {
			if addr, ok := c.secCursors[id]; ok {
				if lower == "killcursors" {
					for _, id := range cursorIDs(cmd, lower) {
						delete(c.secCursors, id)
					}
				}
				return p.readOn(ctx, cmd, lower, c, addr, true)
			}
		}
		return dispatched{}, false
	case "find", "aggregate", "count", "distinct":
	default:
		return dispatched{}, false
	}
	mode, tagSets := readPreference(cmd.body)
	switch mode {
	case "secondaryPreferred", "secondary", "nearest":
	default:
		return dispatched{}, false
	}
	if transactional(cmd.body) || (lower == "aggregate" && otherNamespaces(cmd.body)) {
		return dispatched{}, false
	}
	srv, ok := pickSecondary(p.reads.Description(), mode, tagSets)
	if !ok {
		if mode == "secondary" {
			return p.refused(errorf(codeFailedToSatisfyReadPreference, "edgenode: no upstream secondary matches the read preference %s", mode)), true
		}
		return dispatched{}, false
	}
	// The proxy reads with its own credentials: only for a client the
	// database authenticated, with the find privilege.
	if e, err := c.authorize(cmd.name, cmd.db, cmd.coll, actFind); err != nil {
		return dispatched{closeErr: err}, true
	} else if e != nil {
		return p.refused(e), true
	}
	return p.readOn(ctx, cmd, lower, c, srv.Addr.String(), mode == "secondary")
}

// readOn runs a read on the member at addr over the read pool. must: an
// error is the client's answer (a cursor's member, or mode secondary);
// otherwise a failure before anything was sent falls back to the primary.
func (p *Proxy) readOn(ctx context.Context, cmd *command, lower string, c *clientConn, addr string, must bool) (dispatched, bool) {
	ctx, cancel := context.WithTimeout(ctx, secondaryReadTimeout)
	defer cancel()
	fail := func(err error) (dispatched, bool) {
		if !must {
			p.log.Debug("secondary read falls back to the primary", "member", addr, "err", err)
			return dispatched{}, false
		}
		return p.refused(errorf(codeHostUnreachable, "edgenode: upstream member %s: %v", addr, err)), true
	}
	var srv description.Server
	for _, s := range p.reads.Description().Servers {
		if s.Addr.String() == addr {
			srv = s
		}
	}
	if srv.Addr == "" {
		return fail(fmt.Errorf("no longer in the upstream topology"))
	}
	sel, err := p.reads.FindServer(srv)
	if err != nil || sel == nil {
		return fail(fmt.Errorf("not selectable: %v", err))
	}
	conn, err := sel.Connection(ctx)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	id := p.nextRequestID()
	if err := conn.Write(ctx, wire.AppendMsg(nil, id, 0, 0, cmd.body, cmd.seqs...)); err != nil {
		return p.refused(errorf(codeHostUnreachable, "edgenode: upstream member %s: %v", addr, err)), true
	}
	reply, err := conn.Read(ctx)
	if err != nil {
		return p.refused(errorf(codeHostUnreachable, "edgenode: upstream member %s: %v", addr, err)), true
	}
	out, _, err := filterReply(reply, replyFilter{})
	if err != nil {
		return p.refused(errorf(codeInternalError, "edgenode: upstream member %s: %v", addr, err)), true
	}
	m, err := wire.ParseMsg(out)
	if err != nil || m.Header.ResponseTo != id {
		return p.refused(errorf(codeInternalError, "edgenode: upstream member %s: malformed reply", addr)), true
	}
	p.met.commands.WithLabelValues("forwarded").Inc()
	p.met.secondaryReads.Inc()
	body := bson.Raw(m.Body)
	if lower != "killcursors" {
		// A cursor still open lives on that member; one exhausted is
		// forgotten.
		cur, _ := body.Lookup("cursor").DocumentOK()
		cid, _ := cur.Lookup("id").Int64OK()
		if lower == "getmore" {
			if ids := cursorIDs(cmd, lower); len(ids) == 1 && cid == 0 {
				delete(c.secCursors, ids[0])
			}
		} else if cid != 0 {
			if c.secCursors == nil {
				c.secCursors = map[int64]string{}
			}
			c.secCursors[cid] = addr
		}
	}
	return dispatched{reply: body}, true
}
