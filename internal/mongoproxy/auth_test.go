package mongoproxy

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// authProxy starts a proxy in front of the auth-enforcing FerretDB at addr
// (the database itself, or a shim in front of it), with the setup user's
// credentials in the upstream URI, so the proxy requires authentication.
func authProxy(t *testing.T, addr string, mods ...proxyOpt) *testProxy {
	t.Helper()
	tp := newProxyAt(t, authURI(addr), "n1", mods...)
	if !tp.authRequired {
		t.Fatal("the proxy does not require authentication with credentials in its upstream URI")
	}
	return tp
}

// TestFakedAuthenticationIsRefused plays a client without credentials that
// tries to make the proxy believe it authenticated, so that its writes are
// captured with the proxy's own credentials. The upstream really enforces
// authentication (FerretDB with new auth).
// Long on purpose: one table of attacks and their expected outcome, kept
// together with the code that plays them.
func TestFakedAuthenticationIsRefused(t *testing.T) {
	tp := authProxy(t, authFerret(t))
	db := freshDB("fakeauth")
	olog := tp.Replica()
	insert := func(id string) bson.D {
		return bson.D{{Key: "insert", Value: "c"}, {Key: "documents", Value: bson.A{bson.D{{Key: "_id", Value: id}, {Key: "owned", Value: true}}}}, {Key: "$db", Value: db}}
	}
	hello := bson.D{{Key: "hello", Value: 1}, {Key: "$db", Value: "admin"}}
	authenticate := bson.D{{Key: "authenticate", Value: 1}, {Key: "mechanism", Value: "MONGODB-X509"}, {Key: "user", Value: "CN=attacker"}, {Key: "$db", Value: "$external"}}
	ping := bson.D{{Key: "ping", Value: 1}, {Key: "$db", Value: "admin"}}

	// want: "closed" (an authentication command with moreToCome is a
	// protocol violation) or "refused" (error 13 for the write).
	for _, tc := range []struct {
		name, want string
		play       func(r *rawClient)
	}{{
		// hello (ok:1) is the last reply read; authenticate with moreToCome
		// is forwarded without reading its reply, so the proxy judged it by
		// hello's.
		name: "authenticate-moreToCome", want: "closed",
		play: func(r *rawClient) {
			r.cmd(hello)
			_, _ = r.send(wire.FlagMoreToCome, authenticate)
		},
	}, {
		name: "saslStart-moreToCome", want: "closed",
		play: func(r *rawClient) {
			r.cmd(hello)
			_, _ = r.send(wire.FlagMoreToCome, bson.D{{Key: "saslStart", Value: 1}, {Key: "mechanism", Value: "PLAIN"},
				{Key: "payload", Value: bson.Binary{Data: []byte("\x00edgeadmin\x00wrong")}}, {Key: "$db", Value: "admin"}})
		},
	}, {
		name: "hello-speculativeAuthenticate-moreToCome", want: "closed",
		play: func(r *rawClient) {
			r.cmd(hello)
			_, _ = r.send(wire.FlagMoreToCome, bson.D{{Key: "hello", Value: 1}, {Key: "speculativeAuthenticate", Value: bson.D{{Key: "authenticate", Value: 1}, {Key: "mechanism", Value: "MONGODB-X509"}, {Key: "db", Value: "$external"}}}, {Key: "$db", Value: "admin"}})
		},
	}, {
		// FerretDB answers a moreToCome message anyway: the proxy leaves
		// that answer (ping's ok:1) unread and takes it for the answer to the
		// next command, a real authenticate.
		name: "stale-reply", want: "refused",
		play: func(r *rawClient) {
			_, _ = r.send(wire.FlagMoreToCome, ping)
			id, err := r.send(0, authenticate)
			if err != nil {
				return
			}
			h, reply, err := r.read()
			if err == nil && h.ResponseTo != id {
				t.Errorf("the reply to authenticate answers request %d, not %d: %v", h.ResponseTo, id, reply)
			}
		},
	}, {
		// The same over legacy OP_QUERY: a stale OP_MSG reply shifts every
		// answer by one, so the OP_QUERY authenticate gets isMaster's ok:1.
		name: "stale-reply-op-query", want: "refused",
		play: func(r *rawClient) {
			_, _ = r.send(wire.FlagMoreToCome, ping)
			if _, err := r.sendQuery("admin", bson.D{{Key: "isMaster", Value: 1}}); err != nil {
				return
			}
			_, _, _ = r.read()
			if _, err := r.sendQuery("$external", bson.D{{Key: "authenticate", Value: 1}, {Key: "mechanism", Value: "MONGODB-X509"}}); err != nil {
				return
			}
			_, _, _ = r.read()
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			before := olog.LastSeq()
			r := dialRaw(t, tp.Addr().String())
			tc.play(r)
			// Then the write the proxy performs with its own credentials.
			id := "by-" + tc.name
			sent, err := r.send(0, insert(id))
			outcome := "closed"
			if err == nil {
				h, reply, err := r.read()
				switch {
				case err != nil:
				case h.ResponseTo == sent && reply.Lookup("ok").AsFloat64() == 1 && reply.Lookup("n").AsInt64() == 1:
					outcome = "captured"
					t.Errorf("the unauthenticated insert was captured: %v", reply)
				case h.ResponseTo == sent && reply.Lookup("code").AsInt64() == int64(codeUnauthorized):
					outcome = "refused"
				default:
					outcome = "other"
					t.Errorf("the unauthenticated insert got %v (reply to %d, sent %d), want error 13 or a closed connection", reply, h.ResponseTo, sent)
				}
			}
			if outcome != tc.want {
				t.Errorf("outcome %s, want %s", outcome, tc.want)
			}
			if tc.want == "closed" && !strings.Contains(tp.logs.String(), "authentication commands must be answered") {
				t.Errorf("no log line for the closed connection")
			}
			if got := olog.LastSeq(); got != before {
				t.Errorf("op log advanced %d -> %d", before, got)
			}
			n, err := tp.direct.Database(db).Collection("c").CountDocuments(testCtx, bson.D{{Key: "_id", Value: id}})
			if err != nil || n != 0 {
				t.Errorf("the document is in the database: %d %v", n, err)
			}
		})
	}
}

// TestRealAuthentication: a driver that authenticates with SCRAM through the
// proxy writes (FerretDB reports no privileges: every authenticated user may
// write), one that does not is refused the captured write and the read (by
// the database).
func TestRealAuthentication(t *testing.T) {
	ensureUser(t, "writer", "writer-pass-0123")
	tp := authProxy(t, authFerret(t))
	db := freshDB("realauth")
	before := tp.Replica().LastSeq()

	anon := tp.client.Database(db).Collection("c")
	_, err := anon.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}})
	var se mongo.ServerError
	if !errors.As(err, &se) || !se.HasErrorCode(int(codeUnauthorized)) || !strings.Contains(err.Error(), "requires authentication") {
		t.Fatalf("unauthenticated insert: %v", err)
	}
	if err := anon.FindOne(testCtx, bson.D{}).Err(); !errors.As(err, &se) || !se.HasErrorCode(int(codeUnauthorized)) {
		t.Fatalf("unauthenticated read: %v", err)
	}

	for _, mech := range []string{"SCRAM-SHA-256", "SCRAM-SHA-1"} {
		uri := fmt.Sprintf("mongodb://writer:writer-pass-0123@%s/?authSource=admin&authMechanism=%s", tp.Addr(), mech)
		c := connect(t, uri).Database(db).Collection("c")
		id := "w-" + mech
		if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: id}}); err != nil {
			t.Fatalf("%s: authenticated insert: %v", mech, err)
		}
		if _, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}); err != nil {
			t.Fatalf("%s: authenticated update: %v", mech, err)
		}
	}
	if got := tp.Replica().LastSeq(); got != before+4 {
		t.Fatalf("op log %d -> %d, want 4 ops", before, got)
	}
	if !strings.Contains(tp.logs.String(), "reports no privileges") {
		t.Fatal("no log line saying the database has no role model")
	}
}
