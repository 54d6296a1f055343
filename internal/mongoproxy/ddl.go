package mongoproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/replica"
)

// DDL on replicated namespaces is replicated by the replica core (see the
// package documentation, "DDL"): this file decides what a client's DDL
// command changes, checks the client may, and hands it to the core.

// genericFields are command fields that are not part of a DDL change.
var genericFields = map[string]bool{
	"$db": true, "lsid": true, "$clusterTime": true, "writeConcern": true, "comment": true, "apiVersion": true,
	"apiStrict": true, "apiDeprecationErrors": true, "$readPreference": true, "txnNumber": true, "autocommit": true,
	"startTransaction": true, "commitQuorum": true, "maxTimeMS": true, "$audit": true, "$client": true,
}

// ddlActions are the privileges DDL on a replicated namespace needs.
var ddlActions = map[string]string{
	"drop": actDropCollection, "create": actCreateCollection, "createindexes": actCreateIndex, "dropindexes": actDropIndex,
}

// dispatchDDL captures DDL on replicated namespaces (ok=false: not
// replicated, forward as is). drop (and the replicated collections of
// dropDatabase) is executed by the replica core; create, createIndexes
// and dropIndexes are forwarded, so the client gets the database's own
// answer, and committed to the core once it succeeded.
func (p *Proxy) dispatchDDL(ctx context.Context, cmd *command, lower string, c *clientConn) (dispatched, bool) {
	if lower == "dropdatabase" {
		return p.dropDatabase(ctx, cmd, c)
	}
	if cmd.db == metaDB {
		return p.refused(errorf(codeBadValue, "edgenode: the database %s is reserved for the proxy's metadata", metaDB)), true
	}
	if !p.ns.replicated(cmd.db, cmd.coll) {
		return dispatched{}, false
	}
	ns := cmd.ns()
	if merr, err := c.authorize(cmd.name, cmd.db, cmd.coll, ddlActions[lower]); err != nil {
		return dispatched{closeErr: err}, true
	} else if merr != nil {
		return p.refused(merr), true
	}
	done, err := p.core.Admit()
	if err != nil {
		return p.refused(admitError(err)), true
	}
	p.met.commands.WithLabelValues("captured").Inc()
	if lower == "drop" {
		defer done()
		dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		nIdx, err := p.core.Drop(dctx, ns)
		if err != nil {
			return dispatched{reply: errorReply(errorf(codeInternalError, "edgenode: drop %s: %v", ns, err))}, true
		}
		reply, _ := bson.Marshal(bson.D{{Key: "nIndexesWas", Value: int32(nIdx)}, {Key: "ns", Value: ns}, {Key: "ok", Value: 1.0}})
		return dispatched{reply: reply}, true
	}
	// The namespace is held from here until the database has answered
	// and the change is recorded: no write or other DDL of it interleaves.
	turn := p.core.BeginDDL(ns)
	changes, err := p.ddlChanges(ctx, cmd, lower)
	if err != nil {
		turn.End()
		done()
		return p.refused(errorf(codeInternalError, "edgenode: %v", err)), true
	}
	return dispatched{after: func(reply bson.Raw) {
		defer done()
		defer turn.End()
		if reply == nil {
			return
		}
		if ok, _ := reply.Lookup("ok").AsFloat64OK(); ok != 1 {
			return
		}
		actx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		turn.Commit(actx, changes)
	}}, true
}

// dropDatabase drops the database's replicated collections through the
// replica core, then forwards the command for the rest (local-only
// collections, the database itself).
func (p *Proxy) dropDatabase(ctx context.Context, cmd *command, c *clientConn) (dispatched, bool) {
	switch cmd.db {
	case "", "admin", "local", "config":
		return dispatched{}, false
	case metaDB:
		return p.refused(errorf(codeBadValue, "edgenode: the database %s is reserved for the proxy's metadata and cannot be dropped", metaDB)), true
	}
	// Checked before the proxy looks into the database with its own
	// credentials.
	if merr, err := c.authorize(cmd.name, cmd.db, "", actDropDatabase); err != nil {
		return dispatched{closeErr: err}, true
	} else if merr != nil {
		return p.refused(merr), true
	}
	names, err := p.client.Database(cmd.db).ListCollectionNames(ctx, bson.D{})
	if err != nil {
		return p.refused(errorf(codeInternalError, "edgenode: list collections of %s: %v", cmd.db, err)), true
	}
	var nss []string
	for _, c := range names {
		if p.ns.replicated(cmd.db, c) {
			nss = append(nss, cmd.db+"."+c)
		}
	}
	if len(nss) == 0 {
		return dispatched{}, false
	}
	done, err := p.core.Admit()
	if err != nil {
		return p.refused(admitError(err)), true
	}
	defer done()
	for _, ns := range nss {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		_, err := p.core.Drop(dctx, ns)
		cancel()
		if err != nil {
			return p.refused(errorf(codeInternalError, "edgenode: drop %s: %v", ns, err)), true
		}
	}
	p.met.commands.WithLabelValues("captured").Inc()
	return dispatched{purgeAfter: true}, true
}

// admitError is the client's error for a write the write gate refused.
func admitError(err error) *mongoError {
	var be *replica.BlockedError
	if errors.As(err, &be) {
		return notWritable(be.Reason)
	}
	return errorf(codeInternalError, "edgenode: %v", err)
}

func notWritable(reason string) *mongoError {
	return errorf(codeNotWritablePrimary, "edgenode: this node does not accept writes to replicated collections right now (%s); retry, or write through another node", reason)
}

// ddlChanges turns a create, createIndexes or dropIndexes command into the
// replicated changes it makes (one per index).
func (p *Proxy) ddlChanges(ctx context.Context, cmd *command, lower string) ([]replica.DDLChange, error) {
	switch lower {
	case "create":
		d := bson.D{{Key: crdt.DDLCreate, Value: cmd.coll}}
		els, err := cmd.body.Elements()
		if err != nil {
			return nil, err
		}
		for _, el := range els[1:] {
			if !genericFields[el.Key()] {
				d = append(d, bson.E{Key: el.Key(), Value: el.Value()})
			}
		}
		return []replica.DDLChange{{Key: crdt.DDLKey(""), Cmd: d}}, nil
	case "createindexes":
		var out []replica.DDLChange
		for _, spec := range commandDocs(cmd.body, nil, "indexes") {
			out = appendIndexChange(out, cmd.coll, spec)
		}
		for _, s := range cmd.seqs {
			if s.Identifier == "indexes" {
				for _, d := range s.Docs {
					out = appendIndexChange(out, cmd.coll, bson.Raw(d))
				}
			}
		}
		return out, nil
	case "dropindexes":
		names, err := p.droppedIndexes(ctx, cmd)
		if err != nil {
			return nil, err
		}
		var out []replica.DDLChange
		for _, n := range names {
			out = append(out, replica.DDLChange{Key: crdt.DDLKey(n), Cmd: bson.D{{Key: crdt.DDLDropIndexes, Value: cmd.coll}, {Key: "index", Value: n}}})
		}
		return out, nil
	}
	return nil, nil
}

// appendIndexChange appends the change creating the index spec describes.
func appendIndexChange(out []replica.DDLChange, coll string, spec bson.Raw) []replica.DDLChange {
	name, ok := spec.Lookup("name").StringValueOK()
	if !ok || name == "" {
		// MongoDB itself refuses an index without a name.
		return out
	}
	return append(out, replica.DDLChange{Key: crdt.DDLKey(name), Cmd: bson.D{{Key: crdt.DDLCreateIndexes, Value: coll}, {Key: "indexes", Value: bson.A{slices.Clone(spec)}}}})
}

// droppedIndexes resolves dropIndexes' argument (a name, names, "*" or a
// key pattern) to index names.
func (p *Proxy) droppedIndexes(ctx context.Context, cmd *command) ([]string, error) {
	v, err := cmd.body.LookupErr("index")
	if err != nil {
		return nil, nil // the database will refuse it
	}
	var names []string
	switch v.Type {
	case bson.TypeString:
		if n := v.StringValue(); n != "*" {
			return []string{n}, nil
		}
		specs, err := p.client.Database(cmd.db).Collection(cmd.coll).Indexes().ListSpecifications(ctx)
		if err != nil && !replica.IsCode(err, 26) {
			return nil, fmt.Errorf("list indexes of %s: %w", cmd.ns(), err)
		}
		for _, s := range specs {
			if s.Name != "_id_" {
				names = append(names, s.Name)
			}
		}
	case bson.TypeArray:
		vals, _ := bson.Raw(v.Value).Values()
		for _, x := range vals {
			if n, ok := x.StringValueOK(); ok {
				names = append(names, n)
			}
		}
	case bson.TypeEmbeddedDocument:
		specs, err := p.client.Database(cmd.db).Collection(cmd.coll).Indexes().ListSpecifications(ctx)
		if err != nil && !replica.IsCode(err, 26) {
			return nil, fmt.Errorf("list indexes of %s: %w", cmd.ns(), err)
		}
		for _, s := range specs {
			if bytes.Equal(s.KeysDocument, v.Value) {
				names = append(names, s.Name)
			}
		}
	}
	return names, nil
}
