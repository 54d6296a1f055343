package mongoproxy

import (
	"context"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// dispatch decides, for each client command, between pass-through (with
// its handshake or reply rewritten where needed), refusal, and capture by
// the replica core (writes.go decodes a captured write, capture.go runs
// it, ddl.go handles DDL).

// dispatched is what to do with one client command.
type dispatched struct {
	reply   []byte // answer the client with this body (nothing goes upstream)
	rewrite []byte // forward with this body instead of the original
	filter  replyFilter
	// purgeAfter: drop the replica core's document cache once the
	// upstream has answered.
	purgeAfter bool
	// after, when set, runs once the forwarded command is done, with the
	// reply body (nil when there was none or it failed); it must run
	// whatever happened (it releases what dispatch took).
	after func(reply bson.Raw)
	// closeErr: the client's connection must close (its upstream
	// connection broke while the proxy used it).
	closeErr error
}

// dispatch routes a command from connection c: captured writes on
// replicated namespaces are handled here; refusals are answered here;
// everything else is forwarded (with the handshake's compression offer
// removed).
func (p *Proxy) dispatch(ctx context.Context, cmd *command, lower string, c *clientConn) dispatched {
	if !c.internal {
		if e := checkNamespaces(cmd, lower); e != nil {
			return p.refused(e)
		}
	}
	switch lower {
	case "hello", "ismaster":
		// Forwarded for the client's authentication; answered as the
		// proxy itself (hello.go).
		p.met.commands.WithLabelValues("forwarded").Inc()
		d := dispatched{rewrite: helloCommand(cmd.body)}
		d.filter.rewrite = func(up bson.Raw) bson.Raw { return c.helloReply(lower, up) }
		return d
	case "drop", "dropdatabase", "create", "createindexes", "dropindexes":
		if d, ok := p.dispatchDDL(ctx, cmd, lower, c); ok {
			return d
		}
		// Not replicated: forwarded. Cached documents of dropped
		// collections must not outlive them.
		p.met.commands.WithLabelValues("forwarded").Inc()
		return dispatched{purgeAfter: lower == "drop" || lower == "dropdatabase"}
	case "listdatabases":
		p.met.commands.WithLabelValues("forwarded").Inc()
		hide := []string{metaDB}
		if !c.internal {
			hide = append(hide, reservedDB)
		}
		return dispatched{filter: replyFilter{hideDBs: hide}}
	case "insert", "update", "delete", "findandmodify":
		if d, ok := p.dispatchWrite(ctx, cmd, lower, c); ok {
			return d
		}
	case "aggregate", "bulkwrite", "renamecollection", "mapreduce":
		if d, ok := p.checkBypass(cmd, lower, c); ok {
			return d
		}
	}
	if d, ok := p.dispatchRead(ctx, cmd, lower, c); ok {
		return d
	}
	if d, ok := p.coalesce(ctx, cmd, lower, c); ok {
		return d
	}
	if cmd.coll != "" && transactional(cmd.body) && p.ns.replicated(cmd.db, cmd.coll) {
		return p.refused(refuse(cmd.ns(), "a multi-document transaction"))
	}
	p.met.commands.WithLabelValues("forwarded").Inc()
	return dispatched{}
}

// dispatchWrite captures a write command on a replicated namespace (ok
// false: not replicated, forward it): decoded, authorized, admitted by the
// write gate, then run through the replica core.
func (p *Proxy) dispatchWrite(ctx context.Context, cmd *command, lower string, c *clientConn) (d dispatched, ok bool) {
	if cmd.db == metaDB {
		return p.refused(metaWriteError()), true
	}
	if !p.ns.replicated(cmd.db, cmd.coll) {
		return dispatched{}, false
	}
	if transactional(cmd.body) {
		return p.refused(refuse(cmd.ns(), "a multi-document transaction")), true
	}
	w := parseWrite(cmd, lower)
	// The proxy writes with its own credentials: only for a client the
	// database authenticated, with the privileges the write needs.
	if e, err := c.authorize(cmd.name, cmd.db, cmd.coll, w.actions()...); err != nil {
		return dispatched{closeErr: err}, true
	} else if e != nil {
		return p.refused(e), true
	}
	// The core writes through the proxy's driver client, which would wait
	// for a primary until its server selection timeout: tell the client
	// at once, in the form its driver retries.
	if _, err := p.up.Primary(); err != nil {
		p.met.commands.WithLabelValues("refused").Inc()
		return dispatched{reply: noPrimaryReply(err, true)}, true
	}
	// Bounded so a stuck database cannot hold a document's lease (or a
	// session's turn) forever.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	// A retryable write holds its session's turn from here until it is
	// answered (before the write gate: see package replica's lock order).
	rt, e := p.beginRetry(ctx, cmd, w, c)
	if e != nil {
		return p.refused(e), true
	}
	if rt != nil {
		defer rt.txn.End()
	}
	done, err := p.core.Admit()
	if err != nil {
		return p.refused(admitError(err)), true
	}
	defer done()
	// Logged writes a stepdown left unstored go first: a retry of one is
	// then answered from its record truthfully, and no write reads their
	// documents without them.
	if err := p.core.Settle(ctx); err != nil {
		p.met.commands.WithLabelValues("refused").Inc()
		return dispatched{reply: noPrimaryReply(err, true)}, true
	}
	p.met.commands.WithLabelValues("captured").Inc()
	start := time.Now()
	defer func() { p.met.writeSeconds.Observe(time.Since(start).Seconds()) }()
	return dispatched{reply: w.run(ctx, p, rt)}, true
}

// checkBypass refuses the commands that would write a replicated
// collection behind the capture's back, and hides the reserved database
// from a cluster-wide change stream (ok false: forward as is).
func (p *Proxy) checkBypass(cmd *command, lower string, c *clientConn) (d dispatched, ok bool) {
	switch lower {
	case "aggregate":
		if e := p.checkAggregateOut(cmd); e != nil {
			return p.refused(e), true
		}
		if !c.internal && cmd.db == "admin" {
			if b := hideReservedChanges(cmd.body); b != nil {
				p.met.commands.WithLabelValues("forwarded").Inc()
				return dispatched{rewrite: b}, true
			}
		}
	case "bulkwrite":
		if e := p.checkBulkWrite(cmd); e != nil {
			return p.refused(e), true
		}
	case "renamecollection":
		for _, key := range []string{cmd.name, "to"} {
			if v, err := cmd.body.LookupErr(key); err == nil && v.Type == bson.TypeString {
				db, coll := splitNS(v.StringValue())
				if p.ns.replicated(db, coll) {
					return p.refused(refuse(v.StringValue(), "renameCollection")), true
				}
			}
		}
	case "mapreduce":
		if out, err := cmd.body.LookupErr("out"); err == nil {
			inline := out.Type == bson.TypeEmbeddedDocument && bson.Raw(out.Value).Lookup("inline").Type != 0
			if !inline && p.ns.replicated(cmd.db, cmd.coll) {
				return p.refused(refuse(cmd.ns(), "mapReduce with an output collection")), true
			}
		}
	}
	return dispatched{}, false
}

func (p *Proxy) refused(e *mongoError) dispatched {
	p.met.commands.WithLabelValues("refused").Inc()
	return dispatched{reply: errorReply(e)}
}

// checkAggregateOut refuses $out/$merge into a replicated collection: those
// writes would bypass capture.
func (p *Proxy) checkAggregateOut(cmd *command) *mongoError {
	pl, err := cmd.body.LookupErr("pipeline")
	if err != nil || pl.Type != bson.TypeArray {
		return nil
	}
	stages, _ := bson.Raw(pl.Value).Values()
	for _, st := range stages {
		if st.Type != bson.TypeEmbeddedDocument {
			continue
		}
		first, err := bson.Raw(st.Value).IndexErr(0)
		if err != nil {
			continue
		}
		op := first.Key()
		if op != "$out" && op != "$merge" {
			continue
		}
		db, coll := cmd.db, ""
		v := first.Value()
		switch v.Type {
		case bson.TypeString:
			coll = v.StringValue()
		case bson.TypeEmbeddedDocument:
			target := bson.Raw(v.Value)
			if op == "$merge" {
				if into := target.Lookup("into"); into.Type == bson.TypeString {
					coll = into.StringValue()
				} else if into.Type == bson.TypeEmbeddedDocument {
					target = bson.Raw(into.Value)
				}
			}
			if coll == "" {
				if d := target.Lookup("db"); d.Type == bson.TypeString {
					db = d.StringValue()
				}
				if c := target.Lookup("coll"); c.Type == bson.TypeString {
					coll = c.StringValue()
				}
			}
		}
		if p.ns.replicated(db, coll) {
			return refuse(db+"."+coll, "an aggregation "+op+" stage writing to it")
		}
	}
	return nil
}

// checkBulkWrite refuses the MongoDB 8 bulkWrite command when it names a
// replicated namespace.
func (p *Proxy) checkBulkWrite(cmd *command) *mongoError {
	infos, _ := cmd.array("nsInfo")
	for _, d := range infos {
		if v := d.Lookup("ns"); v.Type == bson.TypeString {
			db, coll := splitNS(v.StringValue())
			if p.ns.replicated(db, coll) {
				return refuse(v.StringValue(), "the bulkWrite command (use insert/update/delete)")
			}
		}
	}
	return nil
}
