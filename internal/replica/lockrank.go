package replica

// Lock ranks. Every blocking turn the core hands out has a rank, and a
// goroutine takes turns in increasing rank only (see the package
// documentation, "Concurrency"):
//
//	rankSession    a client session's turn, held by a retryable write
//	               command while it runs (BeginTxn)
//	rankGate       the write gate, shared by captured writes and local DDL
//	rankSettle     the turn to store the local ops whose store gave up
//	               (Settle, settle.go), taken admitted
//	rankNamespace  a namespace: shared by document writes, exclusive for DDL
//	rankDocument   document leases (several at once only in one call, which
//	               takes them in ascending key order)
//	rankLeaf       the short mutexes that guard in-memory state (clock holds,
//	               drops, subscribers): nothing else is taken under them
//
// Builds with the race detector or the lockrank tag check it at run time
// (lockrank_check.go): a goroutine that takes a turn of a rank at or below
// one it holds panics, naming both. Other builds compile the checks away
// (lockrank_nocheck.go).
type rank int

const (
	rankSession rank = 1 + iota
	rankGate
	rankSettle
	rankNamespace
	rankDocument
	rankLeaf
)

func (r rank) String() string {
	switch r {
	case rankSession:
		return "session"
	case rankGate:
		return "write gate"
	case rankSettle:
		return "settle turn"
	case rankNamespace:
		return "namespace"
	case rankDocument:
		return "document lease"
	case rankLeaf:
		return "leaf mutex"
	}
	return "unknown rank"
}
