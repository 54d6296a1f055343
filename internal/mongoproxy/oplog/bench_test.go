package oplog

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// BenchmarkAppendLocal measures durable appends (one op each) with 1 and 32 concurrent appenders;
// with 32, group commit shares each fsync among the waiting appenders.
func BenchmarkAppendLocal(b *testing.B) {
	for _, workers := range []int{1, 32} {
		b.Run(map[int]string{1: "appenders=1", 32: "appenders=32"}[workers], func(b *testing.B) {
			l := open(b, filepath.Join(b.TempDir(), "log.db"), "n1")
			defer l.Close()
			c := crdt.NewClock("n1", nil)
			ops := make([]*crdt.Op, 1024)
			for i := range ops {
				ops[i] = mkOp(b, c, i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			per := b.N / workers
			for w := range workers {
				n := per
				if w == 0 {
					n += b.N % workers
				}
				wg.Go(func() {
					for i := range n {
						op := *ops[(w*per+i)%len(ops)]
						if err := l.AppendLocal(context.Background(), []*crdt.Op{&op}); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
			ops2, secs, n := hist(l)
			b.ReportMetric(ops2/float64(n), "ops/commit")
			b.ReportMetric(secs/float64(n)*1e6, "us/commit")
		})
	}
}

// hist returns the sums and count of the batch-size and commit-duration histograms.
func hist(l *Log) (ops, secs float64, n uint64) {
	var m, m2 dto.Metric
	_ = l.m.batchOps.Write(&m)
	_ = l.m.commitSeconds.Write(&m2)
	return m.GetHistogram().GetSampleSum(), m2.GetHistogram().GetSampleSum(), m.GetHistogram().GetSampleCount()
}
