package mongoproxy

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// BenchmarkCoalescedFindOne: 1,000 clients, each on its own connection,
// send the same findOne at the same moment; one iteration is one such
// burst. Reported: the upstream queries per burst (reads not answered
// from another's reply) and the p99 of a client's wait, with coalescing
// and as today (NoCoalescing: every read on its client's own upstream
// connection). Printed by scripts/bench (section mongo).
func BenchmarkCoalescedFindOne(b *testing.B) {
	const clients = 1000
	for _, mode := range []struct {
		name string
		off  bool
	}{{"today", true}, {"coalesced", false}} {
		b.Run(mode.name, func(b *testing.B) {
			tp := newProxyAtNoCleanup(b, upstream(b, 0), "coal-"+mode.name)
			tp.opts.NoCoalescing = mode.off
			tp.Proxy.opts.NoCoalescing = mode.off
			defer tp.stop(b)
			db := freshDB("coalbench")
			if _, err := tp.client.Database(db).Collection("t").InsertOne(testCtx, bson.D{{Key: "_id", Value: "hot"}, {Key: "title", Value: "popular"}}); err != nil {
				b.Fatal(err)
			}
			raws := make([]*rawClient, clients)
			for i := range raws {
				raws[i] = dialRaw(b, tp.Addr().String())
				raws[i].cmd(bson.D{{Key: "ping", Value: 1}, {Key: "$db", Value: "admin"}})
			}
			find := bson.D{{Key: "find", Value: "t"}, {Key: "filter", Value: bson.D{{Key: "_id", Value: "hot"}}}, {Key: "limit", Value: int64(1)}, {Key: "singleBatch", Value: true}, {Key: "$db", Value: db}}
			var lat []time.Duration
			before := counter(b, tp.reg, "edgenode_mongoproxy_coalesced_reads_total")
			b.ResetTimer()
			for range b.N {
				var mu sync.Mutex
				var wg sync.WaitGroup
				start := make(chan struct{})
				errs := make(chan error, clients)
				for _, r := range raws {
					wg.Go(func() {
						<-start
						t0 := time.Now()
						id, err := r.send(0, find)
						if err != nil {
							errs <- err
							return
						}
						h, reply, err := r.read()
						if err != nil || h.ResponseTo != id {
							errs <- fmt.Errorf("reply %v answers %d, not %d: %v", reply, h.ResponseTo, id, err)
							return
						}
						if ok, _ := reply.Lookup("ok").AsFloat64OK(); ok != 1 {
							errs <- fmt.Errorf("reply %v", reply)
						}
						d := time.Since(t0)
						mu.Lock()
						lat = append(lat, d)
						mu.Unlock()
					})
				}
				close(start)
				wg.Wait()
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			coalesced := counter(b, tp.reg, "edgenode_mongoproxy_coalesced_reads_total") - before
			slices.Sort(lat)
			b.ReportMetric(float64(clients)-coalesced/float64(b.N), "upstream-queries/1000")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
