package rum

import "math"

// Round trips are kept in a small fixed histogram per (network, node): 40
// buckets on a log scale, each 25% wider than the one before, from 1 ms
// (everything faster falls in the first) to about 7.5 s (everything slower
// falls in the last). A median read from it is off by at most half a
// bucket, about 12%: plenty to tell a near node from a far one, in 160
// bytes, whatever the number of samples. Weights decay exponentially with
// the table's half-life, so old measurements fade and the sketch follows a
// network whose routing changed.
const (
	numBuckets  = 40
	bucketRatio = 1.25
	bucketMinMS = 1.0
)

var logRatio = math.Log(bucketRatio)

type sketch struct {
	w [numBuckets]float32
}

func bucketOf(ms float64) int {
	if ms <= bucketMinMS {
		return 0
	}
	b := int(math.Log(ms/bucketMinMS) / logRatio)
	return min(b, numBuckets-1)
}

// bucketMid is the geometric middle of bucket b, in milliseconds.
func bucketMid(b int) float64 {
	return bucketMinMS * math.Pow(bucketRatio, float64(b)+0.5)
}

func (s *sketch) add(ms float64, w float32) { s.w[bucketOf(ms)] += w }

func (s *sketch) scale(f float32) {
	for i := range s.w {
		s.w[i] *= f
	}
}

func (s *sketch) total() float64 {
	t := 0.0
	for _, w := range s.w {
		t += float64(w)
	}
	return t
}

// merge adds o's weights into s.
func (s *sketch) merge(o *sketch) {
	for i := range s.w {
		s.w[i] += o.w[i]
	}
}

// median returns the estimated median in milliseconds (0 when empty).
func (s *sketch) median() float64 {
	half := s.total() / 2
	if half <= 0 {
		return 0
	}
	acc := 0.0
	for i, w := range s.w {
		acc += float64(w)
		if acc >= half {
			return bucketMid(i)
		}
	}
	return bucketMid(numBuckets - 1)
}
