package mongoproxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os/exec"
	"syscall"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
	"github.com/edgenode/edgenode/internal/replica"
)

// Retryable writes (retry.go), tested as a driver sends them: raw OP_MSG
// commands with lsid {id: UUID} and txnNumber (int64), the statements in a
// document sequence, exactly the shape of the Go driver's
// x/mongo/driver.Operation (addSession) for a retryable write.

// retryCase is one retryable write: its setup (written straight to the
// database, so that the case's write is the first op the proxy logs), the
// command, and what the reply and the collection must say when it was
// applied exactly once.
type retryCase struct {
	name  string
	setup []bson.D
	cmd   func(coll string) (bson.D, []wire.Sequence)
	check func(t *testing.T, reply bson.Raw, docs []bson.Raw)
}

func retryCases() []retryCase {
	seq := func(id string, docs ...bson.D) []wire.Sequence {
		s := wire.Sequence{Identifier: id}
		for _, d := range docs {
			b, _ := bson.Marshal(d)
			s.Docs = append(s.Docs, b)
		}
		return []wire.Sequence{s}
	}
	return []retryCase{{
		name:  "inc",
		setup: []bson.D{{{Key: "_id", Value: 1}, {Key: "n", Value: int32(0)}}},
		cmd: func(coll string) (bson.D, []wire.Sequence) {
			return bson.D{{Key: "update", Value: coll}, {Key: "ordered", Value: true}},
				seq("updates", bson.D{{Key: "q", Value: bson.D{{Key: "_id", Value: 1}}}, {Key: "u", Value: bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}}}})
		},
		check: func(t *testing.T, reply bson.Raw, docs []bson.Raw) {
			wantInt(t, reply, "n", 1)
			wantInt(t, reply, "nModified", 1)
			if len(docs) != 1 || docs[0].Lookup("n").Int32() != 1 {
				t.Fatalf("counter after the retry: %v, want n: 1", docs)
			}
		},
	}, {
		name:  "insert-partial-failure",
		setup: []bson.D{{{Key: "_id", Value: 2}, {Key: "old", Value: true}}},
		cmd: func(coll string) (bson.D, []wire.Sequence) {
			return bson.D{{Key: "insert", Value: coll}, {Key: "ordered", Value: false}},
				seq("documents", bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "_id", Value: 2}}, bson.D{{Key: "_id", Value: 3}})
		},
		check: func(t *testing.T, reply bson.Raw, docs []bson.Raw) {
			wantInt(t, reply, "n", 2)
			we, _ := reply.Lookup("writeErrors").Array().Values()
			if len(we) != 1 || bson.Raw(we[0].Value).Lookup("index").Int32() != 1 || bson.Raw(we[0].Value).Lookup("code").Int32() != codeDuplicateKey {
				t.Fatalf("writeErrors %v, want one duplicate key at index 1", we)
			}
			if len(docs) != 3 {
				t.Fatalf("documents: %v, want 3", docs)
			}
		},
	}, {
		name: "upsert",
		cmd: func(coll string) (bson.D, []wire.Sequence) {
			return bson.D{{Key: "update", Value: coll}, {Key: "ordered", Value: true}},
				seq("updates", bson.D{{Key: "q", Value: bson.D{{Key: "name", Value: "x"}}}, {Key: "u", Value: bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}}}, {Key: "upsert", Value: true}})
		},
		check: func(t *testing.T, reply bson.Raw, docs []bson.Raw) {
			wantInt(t, reply, "n", 1)
			wantInt(t, reply, "nModified", 0)
			up, _ := reply.Lookup("upserted").Array().Values()
			if len(up) != 1 || len(docs) != 1 {
				t.Fatalf("upserted %v, documents %v: want one of each", up, docs)
			}
			if id := bson.Raw(up[0].Value).Lookup("_id"); !id.Equal(docs[0].Lookup("_id")) || docs[0].Lookup("n").Int32() != 1 {
				t.Fatalf("upserted _id %v, document %v: want the same _id, n: 1", id, docs[0])
			}
		},
	}, {
		name:  "delete",
		setup: []bson.D{{{Key: "_id", Value: 1}}, {{Key: "_id", Value: 2}}},
		cmd: func(coll string) (bson.D, []wire.Sequence) {
			return bson.D{{Key: "delete", Value: coll}, {Key: "ordered", Value: true}},
				seq("deletes", bson.D{{Key: "q", Value: bson.D{{Key: "_id", Value: 1}}}, {Key: "limit", Value: int32(1)}})
		},
		check: func(t *testing.T, reply bson.Raw, docs []bson.Raw) {
			wantInt(t, reply, "n", 1)
			if len(docs) != 1 {
				t.Fatalf("documents: %v, want 1", docs)
			}
		},
	}, {
		name:  "findAndModify",
		setup: []bson.D{{{Key: "_id", Value: 1}, {Key: "n", Value: int32(5)}}},
		cmd: func(coll string) (bson.D, []wire.Sequence) {
			return bson.D{{Key: "findAndModify", Value: coll}, {Key: "query", Value: bson.D{{Key: "_id", Value: 1}}},
				{Key: "update", Value: bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}}}, {Key: "new", Value: true}}, nil
		},
		check: func(t *testing.T, reply bson.Raw, docs []bson.Raw) {
			if v := reply.Lookup("value", "n"); v.Type != bson.TypeInt32 || v.Int32() != 6 {
				t.Fatalf("value %v, want the post-image n: 6", reply.Lookup("value"))
			}
			if len(docs) != 1 || docs[0].Lookup("n").Int32() != 6 {
				t.Fatalf("documents: %v, want n: 6", docs)
			}
		},
	}}
}

func wantInt(t *testing.T, reply bson.Raw, key string, want int32) {
	t.Helper()
	if ok, _ := reply.Lookup("ok").AsFloat64OK(); ok != 1 {
		t.Fatalf("reply %v, want ok: 1", reply)
	}
	if v, ok := reply.Lookup(key).Int32OK(); !ok || v != want {
		t.Fatalf("reply %v: %s want %d", reply, key, want)
	}
}

// retryCmd is body with the session fields a driver adds to a retryable
// write, and $db.
func retryCmd(body bson.D, db string, lsid bson.D, txn int64) bson.D {
	out := append(bson.D{}, body...)
	return append(out, bson.E{Key: "lsid", Value: lsid}, bson.E{Key: "txnNumber", Value: txn}, bson.E{Key: "$db", Value: db})
}

func newLsid(t testing.TB) bson.D {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		t.Fatal(err)
	}
	u[6], u[8] = u[6]&0x0f|0x40, u[8]&0x3f|0x80
	return bson.D{{Key: "id", Value: bson.Binary{Subtype: bson.TypeBinaryUUID, Data: u[:]}}}
}

// sendRaw sends one command on a new connection to addr and returns the
// request id and the reply (nil when the connection broke first).
func sendOnce(t testing.TB, addr string, body bson.D, seqs []wire.Sequence) (int32, bson.Raw) {
	t.Helper()
	rc := dialRaw(t, addr)
	defer rc.nc.Close()
	id, err := rc.send(0, body, seqs...)
	if err != nil {
		return id, nil
	}
	h, reply, err := rc.read()
	if err != nil {
		return id, nil
	}
	if h.ResponseTo != id {
		t.Fatalf("reply answers %d, not %d", h.ResponseTo, id)
	}
	return id, reply
}

// TestRetryAfterCut cuts the client's connection once a retryable write's
// op is in the op log (before it is applied and answered) and resends the
// same command, same lsid and txnNumber, on a new connection, as a driver
// retries: the write is applied once, and the retry's reply is the very
// reply the proxy sent on the cut connection. Resending once more changes
// nothing either.
func TestRetryAfterCut(t *testing.T) {
	for _, point := range []replica.FaultPoint{replica.FaultAfterAppend, replica.FaultAfterApply} {
		for _, tc := range retryCases() {
			if point == replica.FaultAfterApply && tc.name != "inc" {
				continue
			}
			t.Run(string(point)+"/"+tc.name, func(t *testing.T) {
				relay := newCutRelay(t)
				tp := newProxy(t, 0, "retry", func(o *Options) { o.Faults = relay.hook })
				relay.start(t, tp.Addr().String())
				db := freshDB("retry")
				dc := tp.direct.Database(db).Collection("c")
				for _, d := range tc.setup {
					if _, err := dc.InsertOne(testCtx, d); err != nil {
						t.Fatal(err)
					}
				}
				body, seqs := tc.cmd("c")
				cmd := retryCmd(body, db, newLsid(t), 7)

				relay.arm(point)
				id, reply := sendOnce(t, relay.addr(), cmd, seqs)
				if reply != nil {
					t.Fatalf("the write was answered although its connection was cut: %v", reply)
				}
				lost := bson.Raw(relay.lostReply(t, id))
				_, retried := sendOnce(t, tp.Addr().String(), cmd, seqs)
				if !bytes.Equal(retried, lost) {
					t.Fatalf("the retry's reply\n%v\ndiffers from the original\n%v", retried, lost)
				}
				_, again := sendOnce(t, tp.Addr().String(), cmd, seqs)
				if !bytes.Equal(again, lost) {
					t.Fatalf("a second retry's reply\n%v\ndiffers from the original\n%v", again, lost)
				}
				tc.check(t, retried, findAll(t, tp.client.Database(db).Collection("c")))
				if n := counter(t, tp.reg, "edgenode_mongoproxy_retried_statements_total"); n == 0 {
					t.Fatal("no statement was answered from its record")
				}
			})
		}
	}
}

// TestRetryAfterKill kills the proxy process (SIGKILL) once a retryable
// write's op is in the op log, before it is applied and answered, starts
// it again on the same op log and database, and resends the same command:
// the restart applies the op once (replay), and the retry is answered from
// the record written in the same transaction as the op, not applied again.
func TestRetryAfterKill(t *testing.T) {
	up := upstream(t, 0)
	direct := connect(t, up)
	defer func() { _ = direct.Disconnect(testCtx) }()
	for _, tc := range retryCases() {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			db := freshDB("retrykill")
			dc := direct.Database(db).Collection("c")
			for _, d := range tc.setup {
				if _, err := dc.InsertOne(testCtx, d); err != nil {
					t.Fatal(err)
				}
			}
			body, seqs := tc.cmd("c")
			cmd := retryCmd(body, db, newLsid(t), 3)

			ch := startChild(t, up, dir, "retrykill", string(replica.FaultAfterAppend)+":1")
			if _, reply := sendOnce(t, ch.addr, cmd, seqs); reply != nil {
				t.Fatalf("the write was answered although the proxy was killed: %v", reply)
			}
			werr := ch.wait()
			var ee *exec.ExitError
			if !errors.As(werr, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child did not die by SIGKILL: %v", werr)
			}

			ch2 := startChild(t, up, dir, "retrykill", "")
			_, retried := sendOnce(t, ch2.addr, cmd, seqs)
			_, again := sendOnce(t, ch2.addr, cmd, seqs)
			if !bytes.Equal(retried, again) {
				t.Fatalf("two retries answered differently:\n%v\n%v", retried, again)
			}
			tc.check(t, retried, findAll(t, dc))
		})
	}
}

// TestRetryTxnTooOld: once a session has run txnNumber 5, a command with
// txnNumber 4 is refused with 225 TransactionTooOld (and not applied),
// while 6 runs.
func TestRetryTxnTooOld(t *testing.T) {
	tp := newProxy(t, 0, "retryold")
	db := freshDB("retryold")
	if _, err := tp.client.Database(db).Collection("c").InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "n", Value: int32(0)}}); err != nil {
		t.Fatal(err)
	}
	body, seqs := retryCases()[0].cmd("c")
	lsid := newLsid(t)
	addr := tp.Addr().String()
	if _, r := sendOnce(t, addr, retryCmd(body, db, lsid, 5), seqs); r == nil {
		t.Fatal("no reply")
	} else {
		wantInt(t, r, "n", 1)
	}
	_, r := sendOnce(t, addr, retryCmd(body, db, lsid, 4), seqs)
	if code, _ := r.Lookup("code").Int32OK(); code != replica.CodeTransactionTooOld {
		t.Fatalf("txnNumber 4 after 5: %v, want error 225", r)
	}
	if _, r := sendOnce(t, addr, retryCmd(body, db, lsid, 6), seqs); r == nil {
		t.Fatal("no reply")
	} else {
		wantInt(t, r, "nModified", 1)
	}
	if m := findOne(t, tp.client.Database(db).Collection("c"), bson.D{{Key: "_id", Value: 1}}); m["n"] != int32(2) {
		t.Fatalf("n = %v, want 2 (txnNumbers 5 and 6 once each, 4 refused)", m["n"])
	}
	// Not retryable: a multi update with a txnNumber is refused, as
	// MongoDB does.
	multi := []wire.Sequence{{Identifier: "updates", Docs: [][]byte{rawDoc(t, bson.D{{Key: "q", Value: bson.D{}}, {Key: "u", Value: bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}}}, {Key: "multi", Value: true}})}}}
	_, r = sendOnce(t, addr, retryCmd(body, db, lsid, 7), multi)
	if code, _ := r.Lookup("code").Int32OK(); code != codeInvalidOptions {
		t.Fatalf("multi:true with a txnNumber: %v, want error 72", r)
	}
}

// TestRetryForwardedFerretDB pins what FerretDB 1.24.2 does with a
// retryable write the proxy forwards (a local-only collection: the
// client's command goes upstream byte for byte, lsid and txnNumber
// included): it accepts both and ignores them, so a resent command is
// applied again and an older txnNumber is not refused. (It answers hello
// as a standalone, to which drivers never send a txnNumber.) The proxy
// records nothing for forwarded writes: see the package documentation,
// "Retryable writes". If this test fails, FerretDB changed, and so may
// what the documentation says.
func TestRetryForwardedFerretDB(t *testing.T) {
	db := freshDB("retryfwd")
	tp := newProxy(t, 0, "retryfwd", func(o *Options) { o.LocalOnly = []string{db + ".local"} })
	addr, lsid := tp.Addr().String(), newLsid(t)
	body := bson.D{{Key: "update", Value: "local"}}
	seqs := []wire.Sequence{{Identifier: "updates", Docs: [][]byte{rawDoc(t, bson.D{{Key: "q", Value: bson.D{{Key: "_id", Value: 1}}},
		{Key: "u", Value: bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}}}, {Key: "upsert", Value: true}})}}}
	for _, txn := range []int64{2, 2, 1} {
		if _, r := sendOnce(t, addr, retryCmd(body, db, lsid, txn), seqs); r == nil {
			t.Fatal("no reply")
		} else {
			wantInt(t, r, "n", 1)
		}
	}
	if m := findOne(t, tp.client.Database(db).Collection("local"), bson.D{{Key: "_id", Value: 1}}); m["n"] != int32(3) {
		t.Fatalf("n = %v; FerretDB used to apply every resend (n = 3): its handling of txnNumber changed", m["n"])
	}
}

// TestDriverRetryAppliesOnce is the test with the driver itself:
// an ordinary Go driver on a plain mongodb://HOST:PORT/ (retryWrites is
// its default: the proxy presents a one-member replica set) sends an
// $inc; the connection is cut once the op is logged, before the reply;
// the driver retries on its own, on a new connection, with the same
// lsid and txnNumber, and the counter is incremented once.
func TestDriverRetryAppliesOnce(t *testing.T) {
	for _, point := range []replica.FaultPoint{replica.FaultAfterAppend, replica.FaultAfterApply} {
		t.Run(string(point), func(t *testing.T) {
			relay := newCutRelay(t)
			// The proxy advertises the relay's address (as behind a port
			// mapping), so the driver's topology keeps going through it.
			tp := newProxy(t, 0, "dretry", func(o *Options) { o.Faults, o.Advertise = relay.hook, relay.addr() })
			relay.start(t, tp.Addr().String())
			cl := connect(t, "mongodb://"+relay.addr()+"/")
			db := freshDB("dretry")
			coll := cl.Database(db).Collection("c")
			if _, err := coll.InsertOne(testCtx, bson.D{{Key: "_id", Value: "k"}, {Key: "n", Value: int32(0)}}); err != nil {
				t.Fatal(err)
			}
			cuts := relay.cuts.Load()
			relay.arm(point)
			res, err := coll.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "k"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}})
			if err != nil {
				t.Fatalf("the driver's retried $inc failed: %v", err)
			}
			if relay.cuts.Load() == cuts {
				t.Fatal("the connection was never cut: the test proves nothing")
			}
			if res.MatchedCount != 1 || res.ModifiedCount != 1 {
				t.Fatalf("the retry answered %+v, want the original n 1, nModified 1", res)
			}
			var got struct{ N int32 }
			if err := tp.client.Database(db).Collection("c").FindOne(testCtx, bson.D{{Key: "_id", Value: "k"}}).Decode(&got); err != nil {
				t.Fatal(err)
			}
			if got.N != 1 {
				t.Fatalf("counter is %d after one $inc retried by the driver, want 1", got.N)
			}
			if n := counter(t, tp.reg, "edgenode_mongoproxy_retried_statements_total"); n == 0 {
				t.Fatal("no statement was answered from its record")
			}
		})
	}
}

// TestRetrySessionBelongsToItsUser: with authentication, a retry record
// belongs to the session of one user. Another user sending the same lsid
// (learned somehow) with the same txnNumber gets neither the recorded
// reply nor TransactionTooOld for an older txnNumber: the records are
// keyed by the lsid and the authenticated users together. (The users come
// from the database's connectionStatus reply, as the privilege check reads
// it; here two connections' cached privileges stand in for two logins.)
func TestRetrySessionBelongsToItsUser(t *testing.T) {
	tp := newProxy(t, 0, "owner")
	lsid := newLsid(t)
	body := func(txn int64) *command {
		b, err := bson.Marshal(retryCmd(bson.D{{Key: "update", Value: "c"}, {Key: "updates", Value: bson.A{bson.D{
			{Key: "q", Value: bson.D{{Key: "_id", Value: "k"}}}, {Key: "u", Value: bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}}}}}},
			"owner", lsid, txn))
		if err != nil {
			t.Fatal(err)
		}
		cmd, err := parseCommand(&wire.Msg{Body: b})
		if err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	user := func(name string) *clientConn {
		u, _ := bson.Marshal(bson.D{{Key: "0", Value: bson.D{{Key: "user", Value: name}, {Key: "db", Value: "admin"}}}})
		return &clientConn{privs: &privileges{unrestricted: true, users: u}}
	}
	alice, mallory := user("alice"), user("mallory")
	cmd := body(9)
	rt, e := tp.beginRetry(testCtx, cmd, parseWrite(cmd, "update"), alice)
	if e != nil {
		t.Fatal(e)
	}
	if err := rt.txn.Record(testCtx, []replica.StmtResult{{ID: 0, Result: []byte("alice's reply")}}); err != nil {
		t.Fatal(err)
	}
	rt.txn.End()

	// Alice's own retry finds it; her older txnNumber is too old.
	rt, e = tp.beginRetry(testCtx, cmd, parseWrite(cmd, "update"), alice)
	if e != nil {
		t.Fatal(e)
	}
	if got, err := rt.txn.Recorded(0); err != nil || string(got) != "alice's reply" {
		t.Fatalf("alice's retry: %q %v", got, err)
	}
	rt.txn.End()
	old := body(8)
	if _, e := tp.beginRetry(testCtx, old, parseWrite(old, "update"), alice); e == nil || e.Code != 225 {
		t.Fatalf("alice's older txnNumber: %v, want 225", e)
	}

	// Mallory, same lsid: nothing recorded, nothing too old.
	rt, e = tp.beginRetry(testCtx, cmd, parseWrite(cmd, "update"), mallory)
	if e != nil {
		t.Fatalf("mallory with alice's lsid: %v", e)
	}
	if got, err := rt.txn.Recorded(0); err != nil || got != nil {
		t.Fatalf("mallory read alice's recorded reply: %q %v", got, err)
	}
	rt.txn.End()
	if _, e := tp.beginRetry(testCtx, old, parseWrite(old, "update"), mallory); e != nil {
		t.Fatalf("mallory's txnNumber 8 on alice's lsid: %v", e)
	}
}
