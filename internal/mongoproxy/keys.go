package mongoproxy

import (
	"encoding/binary"
	"encoding/hex"
	"hash/maphash"
	"math"
	"slices"
	"strconv"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// docKey is the canonical identity of a document: namespace plus a
// canonical form of its _id. MongoDB compares numbers by value, so _id 1
// (int32), 1 (int64) and 1.0 (double) name the same document; the key maps
// all of them to one string so they share a lock stripe and a tombstone.
// Other types use their type byte and raw bytes (numbers nested inside a
// compound _id are not normalized: use one numeric type inside compound ids).
func docKey(ns string, id bson.RawValue) string {
	b := make([]byte, 0, len(ns)+1+2+len(id.Value)*2)
	b = append(b, ns...)
	b = append(b, 0)
	switch id.Type {
	case bson.TypeInt32, bson.TypeInt64, bson.TypeDouble:
		var f float64
		var i int64
		isInt := true
		switch id.Type {
		case bson.TypeInt32:
			i = int64(int32(binary.LittleEndian.Uint32(id.Value)))
		case bson.TypeInt64:
			i = int64(binary.LittleEndian.Uint64(id.Value))
		default:
			f = math.Float64frombits(binary.LittleEndian.Uint64(id.Value))
			if f == math.Trunc(f) && math.Abs(f) < 1<<62 {
				i = int64(f)
			} else {
				isInt = false
			}
		}
		if isInt {
			b = append(b, 'n')
			b = strconv.AppendInt(b, i, 10)
		} else {
			b = append(b, 'f')
			b = strconv.AppendFloat(b, f, 'g', -1, 64)
		}
	case bson.TypeString:
		b = append(b, 's')
		b = append(b, id.Value[4:len(id.Value)-1]...)
	default:
		b = append(b, 't')
		b = hex.AppendEncode(b, []byte{byte(id.Type)})
		b = hex.AppendEncode(b, id.Value)
	}
	return string(b)
}

// stripes serializes the proxy's read-modify-write of each document. A
// fixed array of mutexes indexed by a hash of the document key bounds memory
// whatever the number of documents; two documents sharing a stripe only
// wait for each other. Several stripes are always taken in ascending index
// order, which rules out deadlock between multi-document commands.
type stripes struct {
	seed maphash.Seed
	mu   []sync.Mutex
}

func newStripes(n int) *stripes {
	return &stripes{seed: maphash.MakeSeed(), mu: make([]sync.Mutex, n)}
}

func (s *stripes) index(key string) int {
	return int(maphash.String(s.seed, key) % uint64(len(s.mu)))
}

// lock takes the stripes of every key (each once, in ascending order) and
// returns the function that releases them.
func (s *stripes) lock(keys ...string) (unlock func()) {
	idx := make([]int, 0, len(keys))
	for _, k := range keys {
		idx = append(idx, s.index(k))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		s.mu[i].Lock()
	}
	return func() {
		for j := len(idx) - 1; j >= 0; j-- {
			s.mu[idx[j]].Unlock()
		}
	}
}
