package mongoproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
	"github.com/edgenode/edgenode/internal/testkit"
)

// TestCapturedWriteStepdown: a captured $inc whose database write is in
// flight at the upstream's primary when it steps down. The op is logged
// before the store, so it exists whatever happens; it must end up stored
// on the new primary exactly once, and the client must get what a MongoDB
// primary gives a driver: the write's success, or 10107/11602 with the
// RetryableWriteError label, whose automatic retry (same lsid and
// txnNumber) is answered from the retry record and not applied again.
// Afterwards nothing is left unapplied, compensated or parked.
//
// The upstream is the replica-set shim (rsshim_test.go) over two real
// FerretDB servers: the held write is refused by the stepped-down member
// as MongoDB refuses it (10107 NotWritablePrimary with the label), without
// reaching its database. The shims share no data, so the counter document
// is copied to the second member before the stepdown, as the replica set's
// own replication would have.
//
// Run twice: with the proxy's driver retrying its own writes (the default:
// the driver retries the store once a primary is selectable) and with
// retryWrites=false in the upstream URI (an operator's choice), where only
// the replica core stands between the 10107 and a lost or undone op.
func TestCapturedWriteStepdown(t *testing.T) {
	for _, core := range []struct{ name, uri string }{{"core_driver_retries", ""}, {"core_driver_no_retries", "&retryWrites=false"}} {
		for _, clientRetries := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/client_retries=%v", core.name, clientRetries), func(t *testing.T) {
				capturedStepdown(t, core.uri, clientRetries, 0)
			})
		}
	}
	// No primary for longer than the store waits: the client gets the
	// retryable error, the op stays logged, and once a primary is elected
	// the proxy stores it (once) with no write to prompt it.
	t.Run("no_primary_for_longer", func(t *testing.T) {
		capturedStepdown(t, "&retryWrites=false&serverSelectionTimeoutMS=300", false, time.Second)
	})
}

// capturedStepdown runs the scenario. storeRetry > 0 shortens how long the
// store waits for a primary, and the new primary is elected only after
// the in-flight write was answered.
func capturedStepdown(t *testing.T, upstreamExtra string, clientRetries bool, storeRetry time.Duration) {
	set := newRSSet(t, fmt.Sprintf("capstep%d", dbSeq.Add(1)), 9, 10)
	db := freshDB("capstep")
	tp := newProxyAt(t, set.uri()+upstreamExtra, "n1", func(o *Options) { o.StoreRetry = storeRetry })
	a, b := set.members[0], set.members[1]
	da, dbb := directTo(t, a), directTo(t, b)
	waitProxyPrimary(t, tp.Proxy, a.addr)

	// The client counts the update commands it sends: a retry is a second.
	var updates atomic.Int64
	mon := &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
		if e.CommandName == "update" {
			updates.Add(1)
		}
	}}
	uri := "mongodb://" + tp.Addr().String() + "/"
	if !clientRetries {
		uri += "?retryWrites=false"
	}
	cl, err := mongo.Connect(options.Client().ApplyURI(uri).SetMonitor(mon).SetTimeout(60 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Disconnect(testCtx)
	coll := cl.Database(db).Collection("c")
	inc := bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}
	id := bson.D{{Key: "_id", Value: "n"}}

	value := func(c *mongo.Client) int64 {
		raw, err := c.Database(db).Collection("c").FindOne(testCtx, id).Raw()
		if err != nil {
			t.Fatal(err)
		}
		n, _ := raw.Lookup("n").AsInt64OK()
		return n
	}
	// incs counts the $inc ops of the counter the proxy logged.
	incs := func() int {
		n := 0
		for _, op := range localOpsSince(t, tp, 0) {
			if s, ok := op.ID.StringValueOK(); ok && s == "n" && op.NS == db+".c" && op.Kind == crdt.Update {
				n++
			}
		}
		return n
	}

	acked := 0
	if _, err := coll.InsertOne(testCtx, bson.D{{Key: "_id", Value: "n"}, {Key: "n", Value: 0}}); err != nil {
		t.Fatal(err)
	}
	if _, err := coll.UpdateOne(testCtx, id, inc); err != nil {
		t.Fatal(err)
	}
	acked++
	// What the primary committed is on the other member too (the replica
	// set's replication; the shims have none).
	stored, err := da.Database(db).Collection("c").FindOne(testCtx, id).Raw()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dbb.Database(db).Collection("c").InsertOne(testCtx, stored); err != nil {
		t.Fatal(err)
	}

	// The in-flight $inc: logged, its store held at the primary, which
	// steps down; no member is primary until the refusal is seen.
	held := a.holdWrites()
	refused := a.refused.Load()
	sentBefore := updates.Load()
	errc := make(chan error, 1)
	go func() {
		_, err := coll.UpdateOne(testCtx, id, inc)
		errc <- err
	}()
	stepDownUnderStore(t, set, a, held, refused)
	if storeRetry == 0 {
		set.elect(1)
	}

	var inflightErr error
	select {
	case inflightErr = <-errc:
	case <-time.After(90 * time.Second):
		t.Fatal("the in-flight write was never answered")
	}
	if storeRetry > 0 {
		if inflightErr == nil {
			t.Fatal("the in-flight write succeeded with no primary anywhere")
		}
		if v := counter(t, tp.reg, "edgenode_mongoproxy_unstored_ops"); v != 1 {
			t.Errorf("unstored_ops = %v after the store gave up, want 1", v)
		}
		set.elect(1)
	}
	var se mongo.ServerError
	switch {
	case inflightErr == nil:
		acked++
	case clientRetries:
		t.Errorf("in-flight write with a retrying driver: %v, want success", inflightErr)
	case errors.As(inflightErr, &se) && (se.HasErrorCode(10107) || se.HasErrorCode(11602)) && se.HasErrorLabel(labelRetryableWrite):
	default:
		t.Errorf("in-flight write at stepdown: %v, want success or 10107/11602 with %s", inflightErr, labelRetryableWrite)
	}
	t.Logf("in-flight write: %v; the client sent it %d time(s)", inflightErr, updates.Load()-sentBefore)

	if storeRetry > 0 {
		// Nobody writes: the proxy's settle loop stores the logged op on
		// its own once the new primary is known.
		sent := updates.Load()
		waitProxyPrimary(t, tp.Proxy, b.addr)
		want := int64(incs())
		testkit.WaitFor(t, 15*time.Second, "the unstored op to be stored with no write after it", func() bool {
			return counter(t, tp.reg, "edgenode_mongoproxy_unstored_ops") == 0 && value(dbb) == want
		})
		if updates.Load() != sent {
			t.Fatal("the client sent a write meanwhile")
		}
		if v := counter(t, tp.reg, "edgenode_mongoproxy_ops_applied_total", "source", "settle"); v != 1 {
			t.Errorf("ops applied by settle = %v, want 1", v)
		}
	}

	// One more acknowledged increment once the new primary is known, on a
	// new connection (the old ones went to the former primary).
	waitProxyPrimary(t, tp.Proxy, b.addr)
	after := connect(t, uri)
	defer after.Disconnect(testCtx)
	if _, err := after.Database(db).Collection("c").UpdateOne(testCtx, id, inc); err != nil {
		t.Fatalf("$inc after the election: %v", err)
	}
	acked++

	// Exactly once: every logged $inc of the document is in the new
	// primary's counter, once, and every acknowledged one was logged.
	logged := incs()
	if logged != acked && !(inflightErr != nil && logged == acked+1) {
		t.Errorf("%d $inc ops logged for %d acknowledged (in-flight: %v)", logged, acked, inflightErr)
	}
	rep := tp.Replica()
	testkit.WaitFor(t, 30*time.Second, "every local op to be applied", func() bool { return rep.Applied(rep.Origin()) == rep.LastSeq() })
	if got := value(dbb); got != int64(logged) {
		t.Errorf("the new primary's counter is %d, want %d (each logged $inc once)", got, logged)
	}
	if got := value(da); got != 1 {
		t.Errorf("the former primary's counter is %d, want 1 (the held write was refused there)", got)
	}
	if got := value(cl); got != int64(logged) {
		t.Errorf("the counter read through the proxy is %d, want %d", got, logged)
	}

	// Nothing stuck, undone or parked.
	for _, m := range []string{"edgenode_mongoproxy_compensations_total", "edgenode_mongoproxy_late_applies_total", "edgenode_mongoproxy_apply_conflicts_total"} {
		if v := counter(t, tp.reg, m); v != 0 {
			t.Errorf("%s = %v, want 0", m, v)
		}
	}
	if c, a := counter(t, tp.reg, "edgenode_mongoproxy_ops_captured_total"), counter(t, tp.reg, "edgenode_mongoproxy_ops_applied_total", "source", "local")+counter(t, tp.reg, "edgenode_mongoproxy_ops_applied_total", "source", "settle"); c != a {
		t.Errorf("ops captured %v, applied locally %v", c, a)
	}
	if v := counter(t, tp.reg, "edgenode_mongoproxy_unstored_ops"); v != 0 {
		t.Errorf("unstored_ops = %v, want 0", v)
	}
	if v := counter(t, tp.reg, "edgenode_mongoproxy_upstream_primary_known"); v != 1 {
		t.Errorf("upstream_primary_known = %v", v)
	}
	if err := tp.Ready(); err != nil {
		t.Errorf("Ready() = %v", err)
	}
}

// TestRetryAfterStoreGaveUp: a driver's retryable $inc (raw OP_MSG with
// lsid, txnNumber and stmtIds, as the Go driver sends it) whose store
// finds no primary for longer than StoreRetry gets 10107 with the
// RetryableWriteError label; its op and its statement's record are
// logged, the op unstored. The driver's retry (same lsid, txnNumber,
// stmtId) while there is still no primary gets the same error and logs
// nothing; once a primary is elected it is answered from the record (n: 1,
// nModified: 1, the original's result), not applied again, and the op is
// stored in the new primary's database by the time the answer arrives.
// Upstream: the replica-set shim over two real FerretDB servers
// (rsshim_test.go), as in TestCapturedWriteStepdown.
func TestRetryAfterStoreGaveUp(t *testing.T) {
	set := newRSSet(t, fmt.Sprintf("retrygaveup%d", dbSeq.Add(1)), 9, 10)
	db := freshDB("retrygaveup")
	tp := newProxyAt(t, set.uri()+"&retryWrites=false&serverSelectionTimeoutMS=300", "n1", func(o *Options) { o.StoreRetry = time.Second })
	a, b := set.members[0], set.members[1]
	da, dbb := directTo(t, a), directTo(t, b)
	waitProxyPrimary(t, tp.Proxy, a.addr)
	addr := tp.Addr().String()

	// The counter, written through the proxy and copied to the other
	// member (the replica set's replication; the shims have none).
	cl := connect(t, "mongodb://"+addr+"/?retryWrites=false")
	defer cl.Disconnect(testCtx)
	id := bson.D{{Key: "_id", Value: "n"}}
	if _, err := cl.Database(db).Collection("c").InsertOne(testCtx, bson.D{{Key: "_id", Value: "n"}, {Key: "n", Value: int32(0)}}); err != nil {
		t.Fatal(err)
	}
	stored, err := da.Database(db).Collection("c").FindOne(testCtx, id).Raw()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dbb.Database(db).Collection("c").InsertOne(testCtx, stored); err != nil {
		t.Fatal(err)
	}
	value := func(c *mongo.Client) int32 {
		raw, err := c.Database(db).Collection("c").FindOne(testCtx, id).Raw()
		if err != nil {
			t.Fatal(err)
		}
		return raw.Lookup("n").Int32()
	}
	incs := func() int {
		n := 0
		for _, op := range localOpsSince(t, tp, 0) {
			if op.NS == db+".c" && op.Kind == crdt.Update {
				n++
			}
		}
		return n
	}
	upd, _ := bson.Marshal(bson.D{{Key: "q", Value: id}, {Key: "u", Value: bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}}}})
	seqs := []wire.Sequence{{Identifier: "updates", Docs: [][]byte{upd}}}
	cmd := retryCmd(bson.D{{Key: "update", Value: "c"}, {Key: "ordered", Value: true}, {Key: "stmtIds", Value: bson.A{int32(0)}}}, db, newLsid(t), 1)
	retryableNoPrimary := func(what string, reply bson.Raw) {
		t.Helper()
		if code, _ := reply.Lookup("code").AsInt64OK(); code != int64(codeNotWritablePrimary) || !bytes.Contains(reply.Lookup("errorLabels").Value, []byte(labelRetryableWrite)) {
			t.Fatalf("%s: %v, want 10107 with %s", what, reply, labelRetryableWrite)
		}
	}

	// The write: logged, its store held at the primary, which steps down;
	// no member is primary for longer than the store waits.
	held := a.holdWrites()
	refused := a.refused.Load()
	rc := dialRaw(t, addr)
	reqID, err := rc.send(0, cmd, seqs...)
	if err != nil {
		t.Fatal(err)
	}
	stepDownUnderStore(t, set, a, held, refused)
	h, reply, err := rc.read()
	if err != nil || h.ResponseTo != reqID {
		t.Fatalf("reply to the write: %v (answers %d, sent %d)", err, h.ResponseTo, reqID)
	}
	retryableNoPrimary("the write with no primary", reply)
	if n := incs(); n != 1 {
		t.Fatalf("%d $inc ops logged, want 1", n)
	}
	if v := counter(t, tp.reg, "edgenode_mongoproxy_unstored_ops"); v != 1 {
		t.Fatalf("unstored_ops = %v after the store gave up, want 1", v)
	}

	// The driver's retry while there is still no primary, on the same
	// connection (a new one is refused at its handshake then): refused
	// the same way, nothing logged.
	testkit.WaitFor(t, 30*time.Second, "the proxy to see no primary", func() bool { return tp.Ready() != nil })
	retryableNoPrimary("the retry with no primary", rc.cmd(cmd, seqs...))
	if n := incs(); n != 1 {
		t.Fatalf("%d $inc ops logged after the retry with no primary, want 1", n)
	}

	// Once a primary is elected: answered from the record, applied once,
	// and stored by the time it is answered (no polling below).
	set.elect(1)
	waitProxyPrimary(t, tp.Proxy, b.addr)
	_, reply = sendOnce(t, addr, cmd, seqs)
	wantInt(t, reply, "n", 1)
	wantInt(t, reply, "nModified", 1)
	if got := value(dbb); got != 1 {
		t.Errorf("the new primary's counter is %d when the retry is answered, want 1", got)
	}
	if n := incs(); n != 1 {
		t.Errorf("%d $inc ops logged after the retry, want 1", n)
	}
	if v := counter(t, tp.reg, "edgenode_mongoproxy_retried_statements_total"); v != 1 {
		t.Errorf("retried_statements_total = %v, want 1", v)
	}
	if v := counter(t, tp.reg, "edgenode_mongoproxy_unstored_ops"); v != 0 {
		t.Errorf("unstored_ops = %v, want 0", v)
	}
	if got := value(da); got != 0 {
		t.Errorf("the former primary's counter is %d, want 0 (it refused the store)", got)
	}
	if got := value(cl); got != 1 {
		t.Errorf("the counter read through the proxy is %d, want 1", got)
	}
}

// stepDownUnderStore waits until the captured write's store reaches the
// primary a (held there by holdWrites), makes the set primaryless, lets
// the held write go, and waits until a has refused it (its refusals were
// refused before).
func stepDownUnderStore(t *testing.T, set *rsSet, a *rsShim, held <-chan struct{}, refused int64) {
	t.Helper()
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the captured write's store did not reach the primary")
	}
	set.elect(-1)
	a.release()
	testkit.WaitFor(t, 30*time.Second, "the former primary to refuse the store", func() bool { return a.refused.Load() > refused })
}
