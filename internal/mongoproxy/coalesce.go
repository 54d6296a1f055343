package mongoproxy

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/description"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// Read coalescing. When many clients ask for the same thing at the same
// moment (a popular thread opened by thousands at once), the proxy asks
// the database once: identical reads in flight together share one
// upstream round trip, and each client gets the reply under its own
// request id.
//
// Identical means the same command body byte for byte — database,
// collection, filter, projection, sort, limit, skip, hint, collation,
// readConcern, $readPreference, maxTimeMS, comment — once the fields that
// name the client's session (lsid, $clusterTime) are left out, and the same
// identity: with credentials upstream, the clients' authenticated users
// (connectionStatus's authenticatedUsers) must be the same, so a reply is
// never handed to a user other than one it was read for; without
// credentials upstream everyone is the same nobody. Only commands whose
// whole answer is one reply are shared:
//
//   - find with singleBatch: true, or with a limit no larger than its first
//     batch (batchSize, or 101 by default): findOne's shape;
//   - count and distinct.
//
// Never shared: a command with a transaction (txnNumber, startTransaction,
// autocommit), a causally consistent read (readConcern afterClusterTime or
// atClusterTime, snapshot), a read preference other than primary or
// primaryPreferred (those go to secondaries: reads.go), tailable or
// awaitData finds, document sequences, the node's own connection. A
// reply that opened a cursor after all (a first batch over 16 MiB) or
// that is an error is not shared: the cursor is killed and every waiting
// client sends its own command, as without coalescing.
//
// A read never joins a shared read that was sent before the last write any
// client was answered for: a client that reads after its own acknowledged
// write (or anyone's) must see it, as on the database itself. Every command
// that may write (anything but the read-only commands below) moves the
// proxy's write epoch before its reply reaches the client; a flight
// remembers the epoch it was sent in, and a read arriving in a later epoch
// leads a new flight. Under a steady trickle of comments this shares less
// than it could, never wrongly.
//
// The shared read goes over the proxy's own pool (the driver's, as reads
// on secondaries do) to the primary, with the proxy's credentials; a
// client is first checked for the find privilege on the namespace, as
// for any read the proxy performs for it.

// coalesceTimeout bounds one shared read.
const coalesceTimeout = 2 * time.Minute

// flights are the coalescable reads in flight, by key.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
	// epoch counts the replies to commands that may have written (see
	// above); moved by wrote.
	epoch atomic.Uint64
	// afterRead, when set (tests only), runs in a leader between its
	// upstream reply and sharing it: a reply held there was read before
	// whatever is acknowledged meanwhile.
	afterRead atomic.Pointer[func()]
}

// wrote is called before the reply to a command that may have written
// reaches its client: no read arriving after it joins a shared read sent
// before it.
func (f *flights) wrote() { f.epoch.Add(1) }

// readOnlyCommands never write: their replies leave the write epoch alone.
// Anything not listed (aggregate too: $out, $merge) counts as a write.
var readOnlyCommands = map[string]bool{
	"find": true, "count": true, "distinct": true, "getmore": true, "killcursors": true,
	"hello": true, "ismaster": true, "ping": true, "buildinfo": true, "getnonce": true, "whatsmyuri": true,
	"saslstart": true, "saslcontinue": true, "authenticate": true, "logout": true, "endsessions": true,
	"connectionstatus": true, "listcollections": true, "listindexes": true, "listdatabases": true,
	"getparameter": true, "serverstatus": true, "dbstats": true, "collstats": true, "hostinfo": true,
	"explain": true, "getlog": true, "getcmdlineopts": true,
}

// flight is one shared read: its leader sends it, the others wait for
// done. reply is nil when it is not to be shared (each client then sends
// its own).
type flight struct {
	done  chan struct{}
	reply bson.Raw
	epoch uint64 // the write epoch it was sent in
}

// coalesce answers a coalescable read with the reply of an identical read
// in flight, or leads one (ok false: forward as usual).
func (p *Proxy) coalesce(ctx context.Context, cmd *command, lower string, c *clientConn) (dispatched, bool) {
	if p.opts.NoCoalescing || p.reads == nil || c.internal || !coalescable(cmd, lower) {
		return dispatched{}, false
	}
	if e, err := c.authorize(cmd.name, cmd.db, cmd.coll, actFind); err != nil {
		return dispatched{closeErr: err}, true
	} else if e != nil {
		return p.refused(e), true
	}
	var identity []byte
	if p.authRequired {
		identity = c.privs.users
	}
	body := sharedBody(cmd.body)
	key := string(identity) + "\x00" + string(body)

	p.flights.mu.Lock()
	epoch := p.flights.epoch.Load()
	if f := p.flights.m[key]; f != nil && f.epoch == epoch {
		p.flights.mu.Unlock()
		<-f.done // bounded by the leader's coalesceTimeout
		if f.reply == nil {
			return dispatched{}, false
		}
		p.met.coalesced.Inc()
		p.met.commands.WithLabelValues("forwarded").Inc()
		return dispatched{reply: f.reply}, true
	}
	// A flight of an earlier epoch is left to its own waiters; this read
	// leads the one readers arriving from now on join.
	f := &flight{done: make(chan struct{}), epoch: epoch}
	if p.flights.m == nil {
		p.flights.m = map[string]*flight{}
	}
	p.flights.m[key] = f
	p.flights.mu.Unlock()

	reply, err := p.sharedRead(ctx, lower, body)
	if err != nil {
		p.log.Debug("coalesced read not shared; each client sends its own", "command", cmd.name, "err", err)
	}
	if hook := p.flights.afterRead.Load(); hook != nil {
		(*hook)()
	}
	// Out of the table before the waiters wake: a read arriving from now
	// on is not in flight with this one and leads its own.
	p.flights.mu.Lock()
	if p.flights.m[key] == f {
		delete(p.flights.m, key)
	}
	p.flights.mu.Unlock()
	f.reply = reply
	close(f.done)
	if reply == nil {
		return dispatched{}, false
	}
	p.met.commands.WithLabelValues("forwarded").Inc()
	return dispatched{reply: reply}, true
}

// coalescable reports whether a read's whole answer is one reply that
// does not depend on the client's session (see above).
func coalescable(cmd *command, lower string) bool {
	if len(cmd.seqs) > 0 || cmd.coll == "" {
		return false
	}
	switch lower {
	case "find", "count", "distinct":
	default:
		return false
	}
	b := cmd.body
	if _, err := b.LookupErr("txnNumber"); err == nil {
		return false
	}
	for _, k := range []string{"startTransaction", "autocommit", "tailable", "awaitData"} {
		if _, err := b.LookupErr(k); err == nil {
			return false // any value: judged by the database on the client's own path
		}
	}
	if rc, ok := b.Lookup("readConcern").DocumentOK(); ok {
		if _, err := rc.LookupErr("afterClusterTime"); err == nil {
			return false
		}
		if _, err := rc.LookupErr("atClusterTime"); err == nil {
			return false
		}
		if lvl, _ := rc.Lookup("level").StringValueOK(); lvl == "snapshot" {
			return false
		}
	}
	switch mode, _ := readPreference(b); mode {
	case "", "primary", "primaryPreferred":
	default:
		return false
	}
	if lower != "find" {
		return true
	}
	if sb, ok := b.Lookup("singleBatch").BooleanOK(); ok && sb {
		return true
	}
	limit, ok := b.Lookup("limit").AsInt64OK()
	if !ok || limit == 0 {
		return false
	}
	limit = max(limit, -limit)
	batch := int64(101) // the server's default first batch
	if bs, ok := b.Lookup("batchSize").AsInt64OK(); ok {
		batch = bs
	}
	return batch > 0 && limit <= batch
}

// sharedBody is the command without the fields that belong to one
// client's session: what is sent upstream for all, and (with the
// identity) the key.
func sharedBody(body bson.Raw) bson.Raw {
	elems, _ := body.Elements()
	out := make([]byte, 4, len(body))
	for _, e := range elems {
		switch e.Key() {
		case "lsid", "$clusterTime":
			continue
		}
		out = append(out, e...)
	}
	out = append(out, 0)
	out[0], out[1], out[2], out[3] = byte(len(out)), byte(len(out)>>8), byte(len(out)>>16), byte(len(out)>>24)
	return out
}

// sharedRead sends body to the primary over the proxy's pool and returns
// the reply to share (nil with the reason when it is not to be shared).
func (p *Proxy) sharedRead(ctx context.Context, lower string, body bson.Raw) (bson.Raw, error) {
	ctx, cancel := context.WithTimeout(ctx, coalesceTimeout)
	defer cancel()
	addr, err := p.up.Primary()
	if err != nil {
		return nil, err
	}
	var srv description.Server
	for _, s := range p.reads.Description().Servers {
		if s.Addr.String() == addr {
			srv = s
		}
	}
	if srv.Addr == "" {
		return nil, fmt.Errorf("the primary %s is not in the read pool's topology yet", addr)
	}
	sel, err := p.reads.FindServer(srv)
	if err != nil || sel == nil {
		return nil, fmt.Errorf("primary not selectable: %v", err)
	}
	conn, err := sel.Connection(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	p.met.sharedReads.Inc()
	roundTrip := func(b []byte) (bson.Raw, error) {
		id := p.nextRequestID()
		if err := conn.Write(ctx, wire.AppendMsg(nil, id, 0, 0, b)); err != nil {
			return nil, err
		}
		reply, err := conn.Read(ctx)
		if err != nil {
			return nil, err
		}
		out, _, err := filterReply(reply, replyFilter{})
		if err != nil {
			return nil, err
		}
		m, err := wire.ParseMsg(out)
		if err != nil || m.Header.ResponseTo != id || m.MoreToCome() {
			return nil, fmt.Errorf("malformed reply")
		}
		return bytes.Clone(m.Body), nil
	}
	reply, err := roundTrip(body)
	if err != nil {
		return nil, err
	}
	if ok, _ := reply.Lookup("ok").AsFloat64OK(); ok != 1 {
		msg, _ := reply.Lookup("errmsg").StringValueOK()
		return nil, fmt.Errorf("the database answered an error: %s", msg)
	}
	if lower == "find" {
		cur, _ := reply.Lookup("cursor").DocumentOK()
		if id, _ := cur.Lookup("id").AsInt64OK(); id != 0 {
			// More than one batch after all: the cursor lives on the
			// proxy's connection, where no client can reach it.
			ns, _ := cur.Lookup("ns").StringValueOK()
			db, coll := splitNS(ns)
			kill, _ := bson.Marshal(bson.D{{Key: "killCursors", Value: coll}, {Key: "cursors", Value: bson.A{id}}, {Key: "$db", Value: db}})
			_, _ = roundTrip(kill)
			return nil, fmt.Errorf("the reply opened a cursor")
		}
	}
	return reply, nil
}
