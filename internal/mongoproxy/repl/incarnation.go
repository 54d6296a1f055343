package repl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// originFile holds, in the data folder, the origin id this node's op log
// uses.
const originFile = "mongo-origin"

// Incarnation returns the origin id the proxy must use for its ops: the
// node id, plus "~" and a creation time in base 36 when the op log is new.
//
// Ops are identified by (origin, seq). A node whose data folder was wiped
// has lost its op log and would number its ops from 1 again, which its
// peers would take for ops they already have; a new incarnation gives it a
// fresh origin instead (its old ops stay known under the old one). The
// origin is kept in DATA_DIR/mongo-origin next to the op log
// (DATA_DIR/oplog.db). A folder with an op log but no origin file (created
// before incarnations) keeps the plain node id.
func Incarnation(dataDir, nodeID string) (string, error) {
	path := filepath.Join(dataDir, originFile)
	b, err := os.ReadFile(path)
	if err == nil {
		o := strings.TrimSpace(string(b))
		if NodeOf(o) != nodeID {
			return "", fmt.Errorf("repl: %s names origin %q, which is not an incarnation of node %q (a data folder copied from another node?)", path, o, nodeID)
		}
		return o, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("repl: read %s: %w", path, err)
	}
	origin := nodeID + "~" + strconv.FormatInt(time.Now().UnixMilli(), 36)
	if _, err := os.Stat(filepath.Join(dataDir, "oplog.db")); err == nil {
		origin = nodeID
	}
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return "", fmt.Errorf("repl: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return "", fmt.Errorf("repl: write %s: %w", path, err)
	}
	_, werr := f.WriteString(origin + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return "", fmt.Errorf("repl: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("repl: write %s: %w", path, err)
	}
	if d, err := os.Open(dataDir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return origin, nil
}
