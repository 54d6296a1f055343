package mongoproxy

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// MongoDB's built-in roles as connectionStatus {showPrivileges: true}
// reports them (https://www.mongodb.com/docs/manual/reference/built-in-roles/,
// https://www.mongodb.com/docs/manual/reference/command/connectionStatus/).
var (
	readActions      = bson.A{"changeStream", "collStats", "dbHash", "dbStats", "find", "killCursors", "listCollections", "listIndexes", "listSearchIndexes", "planCacheRead"}
	readWriteActions = bson.A{"changeStream", "collStats", "convertToCapped", "createCollection", "createIndex", "createSearchIndexes", "dbHash", "dbStats",
		"dropCollection", "dropIndex", "dropSearchIndex", "find", "insert", "killCursors", "listCollections", "listIndexes", "listSearchIndexes",
		"planCacheRead", "remove", "renameCollectionSameDB", "update", "updateSearchIndex"}
)

// connectionStatusReply is MongoDB's reply for user@admin holding role on db.
func connectionStatusReply(user, role, db string, actions bson.A) bson.D {
	return bson.D{
		{Key: "authInfo", Value: bson.D{
			{Key: "authenticatedUsers", Value: bson.A{bson.D{{Key: "user", Value: user}, {Key: "db", Value: "admin"}}}},
			{Key: "authenticatedUserRoles", Value: bson.A{bson.D{{Key: "role", Value: role}, {Key: "db", Value: db}}}},
			{Key: "authenticatedUserPrivileges", Value: bson.A{
				bson.D{{Key: "resource", Value: bson.D{{Key: "db", Value: db}, {Key: "collection", Value: ""}}}, {Key: "actions", Value: actions}},
				bson.D{{Key: "resource", Value: bson.D{{Key: "db", Value: db}, {Key: "collection", Value: "system.js"}}}, {Key: "actions", Value: actions}},
			}},
		}},
		{Key: "ok", Value: 1.0},
	}
}

// privShim is a TCP shim between the proxy and the auth-enforcing FerretDB:
// it relays every message byte for byte, except connectionStatus with
// showPrivileges, which it answers itself with reply (FerretDB has no roles,
// so a read-only user can only be made up at this one point).
type privShim struct {
	ln       net.Listener
	upstream string
	reply    []byte
	asked    atomic.Int64
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func startPrivShim(t *testing.T, upstream string, reply bson.D) *privShim {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &privShim{ln: ln, upstream: upstream, reply: rawDoc(t, reply)}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *privShim) addr() string { return s.ln.Addr().String() }

func (s *privShim) track(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns = append(s.conns, c)
}

func (s *privShim) accept() {
	defer s.wg.Done()
	for {
		down, err := s.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", s.upstream)
		if err != nil {
			_ = down.Close()
			continue
		}
		s.track(down)
		s.track(up)
		var wmu sync.Mutex // writes to down: relayed replies and the shim's own
		s.wg.Add(2)
		go func() { // upstream -> proxy, message by message
			defer s.wg.Done()
			defer down.Close()
			for {
				msg, err := wire.ReadMessage(up, nil, upstreamMaxMessage)
				if err != nil {
					return
				}
				wmu.Lock()
				_, err = down.Write(msg)
				wmu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		go func() { // proxy -> upstream
			defer s.wg.Done()
			defer up.Close()
			for {
				msg, err := wire.ReadMessage(down, nil, upstreamMaxMessage)
				if err != nil {
					return
				}
				if m, err := wire.ParseMsg(msg); err == nil {
					body := bson.Raw(m.Body)
					if first, err := body.IndexErr(0); err == nil && first.Key() == "connectionStatus" && boolField(body, "showPrivileges", false) {
						s.asked.Add(1)
						wmu.Lock()
						_, err = down.Write(wire.AppendMsg(nil, 1<<30-m.Header.RequestID, m.Header.RequestID, 0, s.reply))
						wmu.Unlock()
						if err != nil {
							return
						}
						continue
					}
				}
				if _, err := up.Write(msg); err != nil {
					return
				}
			}
		}()
	}
}

func isUnauthorized(err error) bool {
	var se mongo.ServerError
	return errors.As(err, &se) && se.HasErrorCode(int(codeUnauthorized))
}

// TestReadOnlyUserCannotWrite plays a user with MongoDB's read role (the
// shim's connectionStatus) who authenticates through the proxy with SCRAM
// and tries every kind of write the proxy performs with its own
// credentials: each one is refused with error 13, nothing is logged, and
// the data stays as it was.
func TestReadOnlyUserCannotWrite(t *testing.T) {
	ensureUser(t, "reader", "reader-pass-0123")
	db := freshDB("readonly")
	shim := startPrivShim(t, authFerret(t), connectionStatusReply("reader", "read", db, readActions))
	tp := authProxy(t, shim.addr())
	direct := connect(t, authURI(authFerret(t)))
	seed := direct.Database(db).Collection("c")
	if _, err := seed.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "v", Value: "original"}}); err != nil {
		t.Fatal(err)
	}
	before := tp.Replica().LastSeq()

	attacker := connect(t, fmt.Sprintf("mongodb://reader:reader-pass-0123@%s/?authSource=admin&authMechanism=SCRAM-SHA-256&maxPoolSize=1", tp.Addr()))
	c := attacker.Database(db).Collection("c")
	// Reads are the database's business, and allowed.
	if m := findOne(t, c, bson.D{{Key: "_id", Value: 1}}); m["v"] != "original" {
		t.Fatalf("read: %v", m)
	}
	id1 := bson.D{{Key: "_id", Value: 1}}
	set := bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: "owned"}}}}
	for _, tc := range []struct {
		name, action string
		do           func() error
	}{
		{"insertOne", "insert", func() error { _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 2}}); return err }},
		{"updateOne", "update", func() error { _, err := c.UpdateOne(testCtx, id1, set); return err }},
		{"upsert", "update", func() error {
			_, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 3}}, set, options.UpdateOne().SetUpsert(true))
			return err
		}},
		{"deleteOne", "remove", func() error { _, err := c.DeleteOne(testCtx, id1); return err }},
		{"deleteMany", "remove", func() error { _, err := c.DeleteMany(testCtx, bson.D{}); return err }},
		{"findOneAndUpdate", "update", func() error { return c.FindOneAndUpdate(testCtx, id1, set).Err() }},
		{"findOneAndDelete", "remove", func() error { return c.FindOneAndDelete(testCtx, id1).Err() }},
		{"createIndex", "createIndex", func() error {
			_, err := c.Indexes().CreateOne(testCtx, mongo.IndexModel{Keys: bson.D{{Key: "v", Value: 1}}})
			return err
		}},
		{"create", "createCollection", func() error { return attacker.Database(db).CreateCollection(testCtx, "other") }},
		{"drop", "dropCollection", func() error { return c.Drop(testCtx) }},
		{"dropDatabase", "dropDatabase", func() error { return attacker.Database(db).Drop(testCtx) }},
	} {
		err := tc.do()
		if !isUnauthorized(err) || !strings.Contains(err.Error(), tc.action) || !strings.Contains(err.Error(), db) {
			t.Errorf("%s: %v; want error 13 naming %s and %s", tc.name, err, tc.action, db)
		}
	}
	if got := tp.Replica().LastSeq(); got != before {
		t.Errorf("op log advanced %d -> %d", before, got)
	}
	all := findAll(t, seed)
	if len(all) != 1 || all[0].Lookup("v").StringValue() != "original" {
		t.Errorf("data changed: %v", all)
	}
	specs, err := seed.Indexes().ListSpecifications(testCtx)
	if err != nil || len(specs) != 1 {
		t.Errorf("indexes: %v %v", specs, err)
	}
	names, _ := direct.Database(db).ListCollectionNames(testCtx, bson.D{})
	if len(names) != 1 {
		t.Errorf("collections: %v", names)
	}
	// One question per connection, whatever the number of writes.
	if n := shim.asked.Load(); n != 1 {
		t.Errorf("the proxy asked for the privileges %d times, want 1 (one connection)", n)
	}
}

// TestReadWriteUserWrites: with MongoDB's readWrite role on the database
// the same writes go through and are captured, and a database the role
// does not cover is still refused.
func TestReadWriteUserWrites(t *testing.T) {
	ensureUser(t, "rwuser", "rwuser-pass-0123")
	db := freshDB("readwrite")
	shim := startPrivShim(t, authFerret(t), connectionStatusReply("rwuser", "readWrite", db, readWriteActions))
	tp := authProxy(t, shim.addr())
	before := tp.Replica().LastSeq()
	cl := connect(t, fmt.Sprintf("mongodb://rwuser:rwuser-pass-0123@%s/?authSource=admin&maxPoolSize=1", tp.Addr()))
	c := cl.Database(db).Collection("c")
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "v", Value: "a"}})
	must("insertOne", err)
	_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: "b"}}}})
	must("updateOne", err)
	_, err = c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: 2}}, bson.D{{Key: "$set", Value: bson.D{{Key: "v", Value: "c"}}}}, options.UpdateOne().SetUpsert(true))
	must("upsert", err)
	must("findOneAndUpdate", c.FindOneAndUpdate(testCtx, bson.D{{Key: "_id", Value: 2}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}).Err())
	_, err = c.DeleteOne(testCtx, bson.D{{Key: "_id", Value: 2}})
	must("deleteOne", err)
	_, err = c.Indexes().CreateOne(testCtx, mongo.IndexModel{Keys: bson.D{{Key: "v", Value: 1}}})
	must("createIndex", err)
	if m := findOne(t, c, bson.D{{Key: "_id", Value: 1}}); m["v"] != "b" {
		t.Fatalf("after writes: %v", m)
	}
	must("drop", c.Drop(testCtx))
	if got := tp.Replica().LastSeq(); got < before+7 {
		t.Fatalf("op log %d -> %d, want at least 7 ops", before, got)
	}
	// readWrite on db only.
	_, err = cl.Database(db+"_other").Collection("c").InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}})
	if !isUnauthorized(err) || !strings.Contains(err.Error(), db+"_other.c") {
		t.Fatalf("insert outside the role: %v", err)
	}
	if n := shim.asked.Load(); n != 1 {
		t.Errorf("the proxy asked for the privileges %d times, want 1 (one connection)", n)
	}
}

// TestParsePrivileges reads MongoDB's documented connectionStatus replies.
// Long on purpose: one table of replies and the privileges they grant.
func TestParsePrivileges(t *testing.T) {
	priv := func(res bson.D, actions ...string) bson.D {
		a := bson.A{}
		for _, x := range actions {
			a = append(a, x)
		}
		return bson.D{{Key: "resource", Value: res}, {Key: "actions", Value: a}}
	}
	reply := func(privs ...bson.D) bson.Raw {
		a := bson.A{}
		for _, p := range privs {
			a = append(a, p)
		}
		return rawDoc(t, bson.D{{Key: "authInfo", Value: bson.D{
			{Key: "authenticatedUsers", Value: bson.A{bson.D{{Key: "user", Value: "u"}, {Key: "db", Value: "admin"}}}},
			{Key: "authenticatedUserRoles", Value: bson.A{}},
			{Key: "authenticatedUserPrivileges", Value: a},
		}}, {Key: "ok", Value: 1.0}})
	}
	ns := func(db, coll string) bson.D { return bson.D{{Key: "db", Value: db}, {Key: "collection", Value: coll}} }
	type check struct {
		action, db, coll string
		want             bool
	}
	for _, tc := range []struct {
		name   string
		reply  bson.Raw
		checks []check
	}{{
		name:  "read on app",
		reply: rawDoc(t, connectionStatusReply("u", "read", "app", readActions)),
		checks: []check{{"find", "app", "c", true}, {"insert", "app", "c", false}, {"update", "app", "c", false},
			{"remove", "app", "c", false}, {"find", "other", "c", false}, {"dropDatabase", "app", "", false}},
	}, {
		name:  "readWrite on app",
		reply: rawDoc(t, connectionStatusReply("u", "readWrite", "app", readWriteActions)),
		checks: []check{{"insert", "app", "c", true}, {"update", "app", "c", true}, {"remove", "app", "c", true},
			{"createIndex", "app", "c", true}, {"dropCollection", "app", "c", true}, {"insert", "app2", "c", false},
			{"dropDatabase", "app", "", false}, {"insert", "app", "system.views", false}},
	}, {
		// readWriteAnyDatabase: every database's normal collections.
		name:  "any database",
		reply: reply(priv(ns("", ""), "find", "insert", "update", "remove", "dropDatabase"), priv(bson.D{{Key: "cluster", Value: true}}, "listDatabases")),
		checks: []check{{"insert", "a", "c", true}, {"insert", "b", "d", true}, {"dropDatabase", "a", "", true},
			{"insert", "a", "system.js", false}, {"listDatabases", "a", "", false}},
	}, {
		name:   "one collection",
		reply:  reply(priv(ns("app", "orders"), "insert")),
		checks: []check{{"insert", "app", "orders", true}, {"insert", "app", "users", false}, {"update", "app", "orders", false}, {"insert", "app", "", false}},
	}, {
		name:   "a collection name in every database",
		reply:  reply(priv(ns("", "logs"), "insert")),
		checks: []check{{"insert", "a", "logs", true}, {"insert", "b", "logs", true}, {"insert", "a", "other", false}},
	}, {
		// __system (and root-like custom roles).
		name:   "anyResource anyAction",
		reply:  reply(priv(bson.D{{Key: "anyResource", Value: true}}, "anyAction")),
		checks: []check{{"insert", "a", "c", true}, {"dropDatabase", "x", "", true}, {"remove", "a", "system.js", true}},
	}, {
		name:   "no privileges (no user, or a user without roles)",
		reply:  reply(),
		checks: []check{{"find", "a", "c", false}, {"insert", "a", "c", false}},
	}, {
		// FerretDB: no role model, no authenticatedUserPrivileges.
		name: "no such field",
		reply: rawDoc(t, bson.D{{Key: "authInfo", Value: bson.D{{Key: "authenticatedUsers", Value: bson.A{bson.D{{Key: "user", Value: "u"}, {Key: "db", Value: "admin"}}}},
			{Key: "authenticatedUserRoles", Value: bson.A{}}}}, {Key: "ok", Value: 1.0}}),
		checks: []check{{"insert", "a", "c", true}, {"dropDatabase", "a", "", true}},
	}} {
		ps, err := parseConnectionStatus(tc.reply)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for _, c := range tc.checks {
			if got := ps.allows(c.action, c.db, c.coll); got != c.want {
				t.Errorf("%s: %s on %s.%s: %v, want %v", tc.name, c.action, c.db, c.coll, got, c.want)
			}
		}
	}
	for name, bad := range map[string]bson.D{
		"ok 0":                   {{Key: "ok", Value: 0.0}, {Key: "errmsg", Value: "no"}},
		"no authInfo":            {{Key: "ok", Value: 1.0}},
		"privileges not array":   {{Key: "authInfo", Value: bson.D{{Key: "authenticatedUserPrivileges", Value: "all"}}}, {Key: "ok", Value: 1.0}},
		"privilege without res.": {{Key: "authInfo", Value: bson.D{{Key: "authenticatedUserPrivileges", Value: bson.A{bson.D{{Key: "actions", Value: bson.A{"insert"}}}}}}}, {Key: "ok", Value: 1.0}},
	} {
		if _, err := parseConnectionStatus(rawDoc(t, bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
