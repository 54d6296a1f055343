//go:build !race && !lockrank

package replica

// lockRankChecked reports whether this build checks lock ranks.
const lockRankChecked = false

// rankChecker checks nothing in this build (see lockrank_check.go).
type rankChecker struct{}

func (*rankChecker) acquire(rank)  {}
func (*rankChecker) release(rank)  {}
func (*rankChecker) owner() uint64 { return 0 }
