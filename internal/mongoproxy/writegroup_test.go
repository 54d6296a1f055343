package mongoproxy

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/edgenode/edgenode/internal/replica"
	"github.com/edgenode/edgenode/internal/testkit"
)

// Group commit of the writes waiting for one document (replica's
// group.go), through the proxy with the official driver: many clients
// $inc one counter.

// groupHistogram returns the groups and the writes they held
// (edgenode_mongoproxy_write_group_ops' count and sum).
func groupHistogram(t *testing.T, reg *prometheus.Registry) (groups uint64, writes float64) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "edgenode_mongoproxy_write_group_ops" {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatal("no edgenode_mongoproxy_write_group_ops")
	return 0, 0
}

// TestHotDocumentWritesAreGrouped: 32 clients × 50 $inc of one document,
// and a 33rd client whose $inc the proxy refuses (the field is a string)
// mixed in. The counter is exact, every $inc is acknowledged once with
// its own matched/modified counts, each is its own op in the log, each
// refused write gets its own TypeMismatch, and the metrics show fewer
// groups (database writes) than writes.
func TestHotDocumentWritesAreGrouped(t *testing.T) {
	tp := newProxy(t, 0, "hot")
	stableFollowsClock(t, tp)
	c := tp.client.Database(freshDB("hot")).Collection("c")
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: "counter"}, {Key: "n", Value: int32(0)}, {Key: "s", Value: "text"}}); err != nil {
		t.Fatal(err)
	}
	groups0, writes0 := groupHistogram(t, tp.reg)
	captured0 := counter(t, tp.reg, "edgenode_mongoproxy_ops_captured_total")
	const clients, each, bad = 32, 50, 20
	var wg sync.WaitGroup
	errs := make(chan error, clients+1)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				res, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "counter"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}})
				if err == nil && (res.MatchedCount != 1 || res.ModifiedCount != 1) {
					err = errors.New("an $inc answered matched " + itoa(res.MatchedCount) + " modified " + itoa(res.ModifiedCount))
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range bad {
			_, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "counter"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "s", Value: int32(1)}}}})
			var we mongo.WriteException
			if !errors.As(err, &we) || len(we.WriteErrors) != 1 || we.WriteErrors[0].Code != int(codeTypeMismatch) {
				errs <- errors.New("the refused $inc answered " + errString(err) + ", want its own TypeMismatch")
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	m := findOne(t, c, bson.D{{Key: "_id", Value: "counter"}})
	if n, _ := m["n"].(int32); n != clients*each || m["s"] != "text" {
		t.Fatalf("counter %v, want n %d and s unchanged", m, clients*each)
	}
	if got := counter(t, tp.reg, "edgenode_mongoproxy_ops_captured_total") - captured0; got != clients*each {
		t.Fatalf("%v ops captured, want one per acknowledged $inc (%d)", got, clients*each)
	}
	groups, writes := groupHistogram(t, tp.reg)
	groups, writes = groups-groups0, writes-writes0
	coalesced := counter(t, tp.reg, "edgenode_mongoproxy_coalesced_ops_total")
	t.Logf("%v writes in %d groups (%.1f per database write), %v coalesced", writes, groups, writes/float64(groups), coalesced)
	if writes != clients*each+bad || float64(groups) >= writes || coalesced == 0 {
		t.Fatalf("%v writes in %d groups, %v coalesced: want %d writes in fewer groups", writes, groups, coalesced, clients*each+bad)
	}
}

// TestGroupedWritesRetriedAfterCut: 16 driver clients $inc one document
// through a relay that cuts every connection once a group's ops are in the
// op log (before any reply). Every write in flight then is retried by the
// driver with its lsid and txnNumber; each is answered from its own
// record, and the counter counts every $inc once.
func TestGroupedWritesRetriedAfterCut(t *testing.T) {
	relay := newCutRelay(t)
	tp := newProxy(t, 0, "gretry", func(o *Options) { o.Faults, o.Advertise = relay.hook, relay.addr() })
	stableFollowsClock(t, tp)
	relay.start(t, tp.Addr().String())
	cl := connect(t, "mongodb://"+relay.addr()+"/")
	db := freshDB("gretry")
	c := cl.Database(db).Collection("c")
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: "k"}, {Key: "n", Value: int32(0)}}); err != nil {
		t.Fatal(err)
	}
	const clients, each = 16, 30
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				res, err := c.UpdateOne(testCtx, bson.D{{Key: "_id", Value: "k"}}, bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: int32(1)}}}})
				if err == nil && (res.MatchedCount != 1 || res.ModifiedCount != 1) {
					err = errors.New("an $inc answered matched " + itoa(res.MatchedCount) + " modified " + itoa(res.ModifiedCount))
				}
				if err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		}()
	}
	// Cut once the writers are well under way (groups form), once only:
	// a second cut could hit a retry, which the driver does not retry again.
	testkit.WaitFor(t, 60*time.Second, "a quarter of the writes", func() bool { return done.Load() >= clients*each/4 })
	relay.arm(replica.FaultAfterAppend)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if relay.cuts.Load() != 1 {
		t.Fatal("the connections were never cut: the test proves nothing")
	}
	var got struct{ N int32 }
	if err := tp.client.Database(db).Collection("c").FindOne(testCtx, bson.D{{Key: "_id", Value: "k"}}).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.N != clients*each {
		t.Fatalf("counter %d after %d acknowledged $inc (some retried after the cut), want %d", got.N, clients*each, clients*each)
	}
	if n := counter(t, tp.reg, "edgenode_mongoproxy_retried_statements_total"); n == 0 {
		t.Fatal("no statement was answered from its record")
	}
	t.Logf("%v statements answered from their records after the cut; %v writes coalesced", counter(t, tp.reg, "edgenode_mongoproxy_retried_statements_total"), counter(t, tp.reg, "edgenode_mongoproxy_coalesced_ops_total"))
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
