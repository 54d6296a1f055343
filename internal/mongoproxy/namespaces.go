package mongoproxy

import (
	"fmt"
	"path"
	"strings"

	"github.com/edgenode/edgenode/internal/replica"
)

// metaDB is the replica core's own database (replica.MetaDB): tombstones
// of deleted replicated documents, DDL records and parked conflicting
// operations. It is never replicated, hidden from listDatabases replies,
// and refuses client writes.
const metaDB = replica.MetaDB

// nsMatcher decides which namespaces ("db.collection") are replicated.
// Patterns use path.Match syntax on the full namespace ("db.*", "db.users",
// "*.sessions"); "*" matches every namespace. The system databases (admin,
// local, config), the proxy's own database and system.* collections are
// never replicated whatever the patterns say.
type nsMatcher struct {
	replicate []string
	localOnly []string
}

func newNSMatcher(replicate, localOnly []string) (*nsMatcher, error) {
	if len(replicate) == 0 {
		replicate = []string{"*"}
	}
	for _, list := range [][]string{replicate, localOnly} {
		for _, p := range list {
			if p == "" {
				return nil, fmt.Errorf("mongoproxy: empty namespace pattern")
			}
			if _, err := path.Match(p, "x.y"); err != nil {
				return nil, fmt.Errorf("mongoproxy: namespace pattern %q: %w", p, err)
			}
		}
	}
	return &nsMatcher{replicate: replicate, localOnly: localOnly}, nil
}

func matchAny(patterns []string, ns string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, ns); ok {
			return true
		}
	}
	return false
}

// replicated reports whether writes to db.coll are captured and replicated.
func (m *nsMatcher) replicated(db, coll string) bool {
	switch db {
	case "", "admin", "local", "config", metaDB:
		return false
	}
	if coll == "" || strings.HasPrefix(coll, "system.") {
		return false
	}
	ns := db + "." + coll
	return matchAny(m.replicate, ns) && !matchAny(m.localOnly, ns)
}

func splitNS(ns string) (db, coll string) {
	db, coll, _ = strings.Cut(ns, ".")
	return db, coll
}
