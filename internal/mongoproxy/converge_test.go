package mongoproxy

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/crdt/crdttest"
)

// TestConvergence is the end-to-end property test: random histories of ops
// from 3-5 origins are delivered to 3-5 replicas, each a separate FerretDB
// behind its own proxy, in a random order per replica with duplicates and
// in random batches (as ApplyRemote calls). Every replica must end with
// documents (read through its proxy with the driver) identical to each
// other's and to the sequential reference model of the semantics.
// It runs over each upstream kind, with fewer cases over FerretDB on
// PostgreSQL (slower per write, and the merge is the same code).
// -mongoproxy.long runs ten times as many cases.
func TestConvergence(t *testing.T) {
	for _, k := range upstreamKinds {
		cases := 100
		if k == postgresKind {
			cases = 25
		}
		if *flagLong {
			cases *= 10
		}
		t.Run(string(k), func(t *testing.T) { testConvergence(t, k, cases) })
	}
}

// testConvergence is TestConvergence over upstream kind k. Long on purpose:
// the property test's generation, delivery and comparison read as one loop.
func testConvergence(t *testing.T, k upstreamKind, cases int) {
	const maxReplicas = 5
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	master := rand.New(rand.NewPCG(seed, 0x5eed))
	proxies := make([]*testProxy, maxReplicas)
	for i := range proxies {
		proxies[i] = newProxyOver(t, k, i, fmt.Sprintf("p%d", i))
	}
	db := freshDB("conv")
	start := time.Now()
	for k := range cases {
		caseSeed := master.Uint64()
		rng := rand.New(rand.NewPCG(caseSeed, uint64(k)))
		nReplicas := 3 + rng.IntN(3)
		origins := 3 + rng.IntN(3)
		hist := crdttest.RandomHistory(rng, origins, 8+rng.IntN(30))
		// Fresh collections per case, on the shared databases.
		ops := make([]*crdt.Op, len(hist))
		for i, op := range hist {
			c := *op
			_, coll, _ := strings.Cut(op.NS, ".")
			c.NS = fmt.Sprintf("%s.k%d_%s", db, k, coll)
			ops[i] = &c
		}
		want := crdttest.ReferenceAll(ops)

		var wg sync.WaitGroup
		errs := make([]error, nReplicas)
		for r := 0; r < nReplicas; r++ {
			deliveries := crdttest.Deliveries(rng, ops, 0.3)
			batchRng := rand.New(rand.NewPCG(rng.Uint64(), uint64(r)))
			wg.Add(1)
			go func(r int) {
				defer wg.Done()
				for len(deliveries) > 0 {
					n := min(1+batchRng.IntN(6), len(deliveries))
					if err := proxies[r].Replica().ApplyRemote(testCtx, deliveries[:n]); err != nil {
						errs[r] = err
						return
					}
					deliveries = deliveries[n:]
				}
			}(r)
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("case %d (seed %d) replica %d: %v", k, caseSeed, r, err)
			}
		}
		namespaces := map[string]bool{}
		for _, op := range ops {
			namespaces[op.NS] = true
		}
		for r := 0; r < nReplicas; r++ {
			got := map[crdttest.DocKey]bson.Raw{}
			for ns := range namespaces {
				dbName, coll := splitNS(ns)
				for _, d := range findAll(t, proxies[r].client.Database(dbName).Collection(coll)) {
					if bytes.Contains(d, []byte(crdt.MetaField)) {
						t.Fatalf("case %d replica %d: hidden field visible: %v", k, r, d)
					}
					id := d.Lookup("_id")
					got[crdttest.DocKey{NS: ns, ID: string(append([]byte{byte(id.Type)}, id.Value...))}] = d
				}
			}
			for _, key := range crdttest.SortedKeys(want) {
				if !crdttest.Equal(got[key], want[key]) {
					t.Fatalf("case %d (seed %d) replica %d, %s %v:\n got  %v\n want %v\nops:\n%s", k, caseSeed, r, key.NS, key.IDValue(), got[key], want[key], dumpOps(ops, key))
				}
			}
			for _, key := range crdttest.SortedKeys(got) {
				if _, ok := want[key]; !ok {
					t.Fatalf("case %d (seed %d) replica %d: unexpected document %v\nops:\n%s", k, caseSeed, r, got[key], dumpOps(ops, key))
				}
			}
		}
	}
	t.Logf("%d cases in %v", cases, time.Since(start).Round(time.Millisecond))
	if parked := counter(t, proxies[0].reg, "edgenode_mongoproxy_apply_conflicts_total"); parked != 0 {
		t.Fatalf("%v ops parked", parked)
	}
}

func dumpOps(ops []*crdt.Op, key crdttest.DocKey) string {
	var b strings.Builder
	for _, op := range ops {
		if crdttest.KeyOf(op) != key {
			continue
		}
		fmt.Fprintf(&b, "  %s:%d %s %s", op.Origin, op.Seq, op.TS, op.Kind)
		if op.Doc != nil {
			fmt.Fprintf(&b, " %v", op.Doc)
		}
		if op.Update != nil {
			fmt.Fprintf(&b, " %v", op.Update)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
