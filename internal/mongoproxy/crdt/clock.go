package crdt

import (
	"cmp"
	"fmt"
	"math"
	"strings"
	"sync"
	"time"
)

// Timestamp is a hybrid logical clock reading. Total order: Wall, then Logical, then Node.
//
// Two different operations never carry the same Timestamp: an origin's Clock hands out strictly
// increasing readings and Node is the origin's id, so (Wall, Logical, Node) identifies an operation.
// Apply relies on this to recognize duplicates.
type Timestamp struct {
	Wall    int64 // unix milliseconds
	Logical uint32
	Node    string
}

// Compare returns -1, 0 or +1 as t sorts before, equal to or after u.
func (t Timestamp) Compare(u Timestamp) int {
	if c := cmp.Compare(t.Wall, u.Wall); c != 0 {
		return c
	}
	if c := cmp.Compare(t.Logical, u.Logical); c != 0 {
		return c
	}
	return strings.Compare(t.Node, u.Node)
}

// IsZero reports whether t is the zero Timestamp (sorts before every clock reading).
func (t Timestamp) IsZero() bool { return t.Wall == 0 && t.Logical == 0 && t.Node == "" }

// Time is the physical part of t, used for $currentDate.
func (t Timestamp) Time() time.Time { return time.UnixMilli(t.Wall).UTC() }

// String formats t for logs: wall.logical@node.
func (t Timestamp) String() string { return fmt.Sprintf("%d.%d@%s", t.Wall, t.Logical, t.Node) }

// Clock is a hybrid logical clock: physical milliseconds plus a logical counter. Now never goes
// backwards even when the wall clock does (the logical counter absorbs it), and Observe folds in a
// remote reading so that causally later writes always get larger timestamps. Safe for concurrent use.
type Clock struct {
	node string
	wall func() time.Time

	mu   sync.Mutex
	last Timestamp // Node is always c.node
}

// NewClock returns a clock for node. wall is the physical clock (nil means time.Now).
func NewClock(node string, wall func() time.Time) *Clock {
	if wall == nil {
		wall = time.Now
	}
	return &Clock{node: node, wall: wall, last: Timestamp{Node: node}}
}

// Now returns a reading strictly greater than every reading Now returned before and than every
// Timestamp passed to Observe (ignoring Node, so it is larger whatever the node ids).
func (c *Clock) Now() Timestamp {
	pt := c.wall().UnixMilli()
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case pt > c.last.Wall:
		c.last.Wall, c.last.Logical = pt, 0
	case c.last.Logical == math.MaxUint32:
		// 4 billion readings in one millisecond (or a wall clock stuck far behind): borrow the next
		// millisecond rather than wrap, keeping the order total.
		c.last.Wall, c.last.Logical = c.last.Wall+1, 0
	default:
		c.last.Logical++
	}
	return c.last
}

// Observe folds in a remote reading: afterwards Now() > t.
func (c *Clock) Observe(t Timestamp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Wall > c.last.Wall || (t.Wall == c.last.Wall && t.Logical > c.last.Logical) {
		c.last.Wall, c.last.Logical = t.Wall, t.Logical
	}
}

// Ahead returns how far t's physical part is ahead of this clock's wall clock (zero or negative:
// not ahead), saturating at the limits of time.Duration.
func (c *Clock) Ahead(t Timestamp) time.Duration {
	return millisBetween(c.wall().UnixMilli(), t.Wall)
}

// ObserveWithin folds in t like Observe unless t is more than max ahead of the wall clock; then
// the clock is left alone and ok is false. Either way it returns how far ahead t is. It keeps a
// remote reading from dragging this clock (and every reading it hands out afterwards) arbitrarily
// far into the future.
func (c *Clock) ObserveWithin(t Timestamp, max time.Duration) (ahead time.Duration, ok bool) {
	ahead = c.Ahead(t)
	if ahead > max {
		return ahead, false
	}
	c.Observe(t)
	return ahead, true
}

// millisBetween returns to-from milliseconds as a Duration, saturating instead of overflowing
// (a peer may send any Wall).
func millisBetween(from, to int64) time.Duration {
	const limit = uint64(math.MaxInt64 / int64(time.Millisecond))
	if to >= from {
		if d := uint64(to) - uint64(from); d <= limit {
			return time.Duration(d) * time.Millisecond
		}
		return math.MaxInt64
	}
	if d := uint64(from) - uint64(to); d <= limit {
		return -time.Duration(d) * time.Millisecond
	}
	return math.MinInt64
}

// Last returns the latest reading handed out or observed (with this clock's node id).
func (c *Clock) Last() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
