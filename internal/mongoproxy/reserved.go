package mongoproxy

import (
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// reservedDB holds the fleet's secrets (the ACME account key, certificate
// private keys, TLS session-ticket keys: package certs stores them in
// edgenode_fleet.tls through this proxy so that they replicate). Only
// internal connections (Proxy.DialInternal) may name it; every client
// command that does, through $db or from another database, is refused.
const reservedDB = "edgenode_fleet"

// isReservedDB compares as MongoDB does when it creates a database: names
// that differ only in case cannot coexist, so none of them may be named.
func isReservedDB(db string) bool { return strings.EqualFold(db, reservedDB) }

func reservedError() *mongoError {
	return errorf(codeUnauthorized, "edgenode: the database %s is reserved for the node's fleet secrets and cannot be read or written through the proxy", reservedDB)
}

func metaWriteError() *mongoError {
	return errorf(codeBadValue, "edgenode: the database %s is reserved for the proxy's metadata and cannot be written", metaDB)
}

// metaReadable are the commands clients may run on the proxy's metadata
// database: reads (operators inspect edgenode_meta.conflicts). Anything else
// could change what the proxy relies on.
var metaReadable = map[string]bool{
	"find": true, "getmore": true, "killcursors": true, "count": true, "distinct": true, "aggregate": true,
	"listcollections": true, "listindexes": true, "collstats": true, "dbstats": true, "datasize": true,
	"explain": true, "ping": true, "hello": true, "ismaster": true, "buildinfo": true,
}

// nsNamingCommands take a full namespace ("db.coll") as the value of
// their first field, whatever database they run on.
var nsNamingCommands = map[string]bool{
	"datasize": true, "splitvector": true, "checkshardingindex": true, "shardcollection": true,
	"reshardcollection": true, "refinecollectionshardkey": true, "unshardcollection": true, "movecollection": true,
	"movechunk": true, "moverange": true, "split": true, "mergechunks": true, "cleanuporphaned": true,
	"clearjumboflag": true, "balancercollectionstatus": true, "analyzeshardkey": true, "configurequeryanalyzer": true,
	"getshardversion": true,
}

// checkNamespaces refuses a client command that names the reserved
// database anywhere it can be named — its $db, a namespace argument, a
// pipeline stage reading from or writing to another database (nested
// pipelines included), the inner command of explain — and one that writes
// into the proxy's metadata database from where the DDL and write checks
// do not look (renameCollection, $out, $merge, mapReduce output).
func checkNamespaces(cmd *command, lower string) *mongoError {
	return checkCommand(cmd.db, cmd.body, lower, cmd.seqs, 0)
}

// maxCommandDepth bounds the recursion through explain and applyOps.
const maxCommandDepth = 8

// checkCommand is checkNamespaces for a command, recursing into explain
// and applyOps. It is one switch over every way a command can name another
// database, longer than this package's functions usually are: kept whole
// so that the list can be read, and reviewed, in one place.
func checkCommand(db string, body bson.Raw, lower string, seqs []wire.Sequence, depth int) *mongoError {
	if depth > maxCommandDepth {
		return errorf(codeFailedToParse, "edgenode: commands nested too deeply")
	}
	if isReservedDB(db) {
		return reservedError()
	}
	if db == metaDB && !metaReadable[lower] {
		return metaWriteError()
	}
	first, err := body.IndexErr(0)
	if err != nil {
		return nil
	}
	name := first.Value()
	namesNS := func(v bson.RawValue, write bool) *mongoError {
		s, ok := v.StringValueOK()
		if !ok {
			return nil
		}
		d, _ := splitNS(s)
		if isReservedDB(d) {
			return reservedError()
		}
		if write && d == metaDB {
			return metaWriteError()
		}
		return nil
	}
	switch {
	case lower == "renamecollection":
		if e := namesNS(name, true); e != nil {
			return e
		}
		if e := namesNS(body.Lookup("to"), true); e != nil {
			return e
		}
	case nsNamingCommands[lower]:
		if e := namesNS(name, false); e != nil {
			return e
		}
	case lower == "aggregate":
		if e := checkPipeline(db, body.Lookup("pipeline"), 0); e != nil {
			return e
		}
	case lower == "create" || lower == "collmod":
		// Views: their pipeline may read from another database.
		if e := checkPipeline(db, body.Lookup("pipeline"), 0); e != nil {
			return e
		}
	case lower == "mapreduce":
		if out := body.Lookup("out"); out.Type == bson.TypeEmbeddedDocument {
			if d, ok := bson.Raw(out.Value).Lookup("db").StringValueOK(); ok {
				if isReservedDB(d) {
					return reservedError()
				}
				if d == metaDB {
					return metaWriteError()
				}
			}
		}
	case lower == "explain":
		if name.Type == bson.TypeEmbeddedDocument {
			inner := bson.Raw(name.Value)
			if f, err := inner.IndexErr(0); err == nil {
				return checkCommand(db, inner, strings.ToLower(f.Key()), nil, depth+1)
			}
		}
	case lower == "bulkwrite":
		for _, d := range commandDocs(body, seqs, "nsInfo") {
			if e := namesNS(d.Lookup("ns"), true); e != nil {
				return e
			}
		}
	case lower == "applyops":
		for _, op := range commandDocs(body, nil, "applyOps") {
			ns, _ := op.Lookup("ns").StringValueOK()
			d, _ := splitNS(ns)
			if isReservedDB(d) {
				return reservedError()
			}
			if d == metaDB {
				return metaWriteError()
			}
			if t, _ := op.Lookup("op").StringValueOK(); t == "c" {
				if o := op.Lookup("o"); o.Type == bson.TypeEmbeddedDocument {
					inner := bson.Raw(o.Value)
					if f, err := inner.IndexErr(0); err == nil {
						if e := checkCommand(d, inner, strings.ToLower(f.Key()), nil, depth+1); e != nil {
							return e
						}
					}
				}
			}
		}
	}
	return nil
}

// commandDocs returns the documents of a command argument given in the
// body (an array) or as a document sequence; anything else is ignored
// (the database will refuse it).
func commandDocs(body bson.Raw, seqs []wire.Sequence, name string) []bson.Raw {
	var out []bson.Raw
	for _, s := range seqs {
		if s.Identifier == name {
			for _, d := range s.Docs {
				out = append(out, bson.Raw(d))
			}
		}
	}
	if v := body.Lookup(name); v.Type == bson.TypeArray {
		vals, _ := bson.Raw(v.Value).Values()
		for _, x := range vals {
			if x.Type == bson.TypeEmbeddedDocument {
				out = append(out, bson.Raw(x.Value))
			}
		}
	}
	return out
}

// checkPipeline walks an aggregation pipeline, and the pipelines nested in
// $lookup, $unionWith and $facet, for stages that name another database:
// reading from the reserved one, or writing to it or to the metadata
// database. Like checkCommand, one switch over the stages that name a
// database, kept whole to be reviewed in one place.
func checkPipeline(db string, pl bson.RawValue, depth int) *mongoError {
	if pl.Type != bson.TypeArray {
		return nil
	}
	if depth > maxCommandDepth*4 {
		return errorf(codeFailedToParse, "edgenode: pipelines nested too deeply")
	}
	stages, err := bson.Raw(pl.Value).Values()
	if err != nil {
		return nil
	}
	for _, st := range stages {
		if st.Type != bson.TypeEmbeddedDocument {
			continue
		}
		first, err := bson.Raw(st.Value).IndexErr(0)
		if err != nil {
			continue
		}
		v := first.Value()
		var spec bson.Raw
		if v.Type == bson.TypeEmbeddedDocument {
			spec = bson.Raw(v.Value)
		}
		reads := func(target bson.RawValue) *mongoError {
			if target.Type != bson.TypeEmbeddedDocument {
				return nil
			}
			if d, ok := bson.Raw(target.Value).Lookup("db").StringValueOK(); ok && isReservedDB(d) {
				return reservedError()
			}
			return nil
		}
		writes := func(target bson.RawValue) *mongoError {
			d := db
			if target.Type == bson.TypeEmbeddedDocument {
				if x, ok := bson.Raw(target.Value).Lookup("db").StringValueOK(); ok {
					d = x
				}
			}
			if isReservedDB(d) {
				return reservedError()
			}
			if d == metaDB {
				return metaWriteError()
			}
			return nil
		}
		var e *mongoError
		switch first.Key() {
		case "$lookup", "$graphLookup":
			if spec != nil {
				if e = reads(spec.Lookup("from")); e == nil {
					e = checkPipeline(db, spec.Lookup("pipeline"), depth+1)
				}
			}
		case "$unionWith":
			if spec != nil {
				if e = reads(v); e == nil {
					e = checkPipeline(db, spec.Lookup("pipeline"), depth+1)
				}
			}
		case "$facet":
			if spec != nil {
				facets, _ := spec.Elements()
				for _, f := range facets {
					if e = checkPipeline(db, f.Value(), depth+1); e != nil {
						break
					}
				}
			}
		case "$out":
			e = writes(v)
		case "$merge":
			target := v
			if spec != nil {
				target = spec.Lookup("into")
			}
			e = writes(target)
		}
		if e != nil {
			return e
		}
	}
	return nil
}

// hideReservedChanges makes a cluster-wide change stream ($changeStream
// with allChangesForCluster, on admin) blind to the reserved database: a
// $match on the events' namespace goes right after the stage. It returns
// the rewritten command, or nil when there is nothing to change.
func hideReservedChanges(body bson.Raw) bson.Raw {
	pl, err := body.LookupErr("pipeline")
	if err != nil || pl.Type != bson.TypeArray {
		return nil
	}
	stages, err := bson.Raw(pl.Value).Values()
	if err != nil || len(stages) == 0 || stages[0].Type != bson.TypeEmbeddedDocument {
		return nil
	}
	cs, err := bson.Raw(stages[0].Value).LookupErr("$changeStream")
	if err != nil || cs.Type != bson.TypeEmbeddedDocument || !boolField(bson.Raw(cs.Value), "allChangesForCluster", false) {
		return nil
	}
	match, _ := bson.Marshal(bson.D{{Key: "$match", Value: bson.D{{Key: "ns.db", Value: bson.D{{Key: "$ne", Value: reservedDB}}}}}})
	vals := make([]bsoncore.Value, 0, len(stages)+1)
	for i, s := range stages {
		vals = append(vals, bsoncore.Value{Type: bsoncore.Type(s.Type), Data: s.Value})
		if i == 0 {
			vals = append(vals, bsoncore.Value{Type: bsoncore.TypeEmbeddedDocument, Data: match})
		}
	}
	return replaceTopLevel(body, "pipeline", bson.Raw(bsoncore.BuildArray(nil, vals...)))
}
