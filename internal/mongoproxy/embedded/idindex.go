package embedded

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // FerretDB's own SQLite driver (already linked in through FerretDB)
)

// FerretDB v1 (SQLite backend) finds a document by _id with the SQL
// expression _ferretdb_sjson->'$._id', but builds its unique _id index on
// _ferretdb_sjson->"_id": SQLite's planner only uses an expression index
// for the very same expression, so every lookup, update and delete by _id
// scans the whole table (measured here: a findOne by _id takes 0.4 ms at
// 2,000 documents and 8.7 ms at 8,000). The proxy reads and writes
// documents by _id all the time, so the embedded database adds, to every
// collection table, a plain index on FerretDB's query expression,
// idIndexSuffix. FerretDB does not know about it (it is not listed by
// listIndexes), SQLite maintains it, and it disappears with its table
// when the collection is dropped. New tables get theirs within
// indexInterval. A real MongoDB upstream needs none of this.
const (
	idIndexSuffix = "_edgenode_id"
	indexInterval = time.Second
)

// indexTables adds the _id expression index to every collection table of
// every database file in dir that lacks it.
func indexTables(ctx context.Context, dir string, log *slog.Logger) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.sqlite"))
	for _, f := range files {
		if err := indexFile(ctx, f); err != nil && ctx.Err() == nil {
			log.Warn("adding the _id lookup index to an embedded database file", "file", f, "err", err)
		}
	}
}

func indexFile(ctx context.Context, path string) error {
	if _, err := os.Stat(path); err != nil {
		return nil // dropped meanwhile
	}
	// mode=rw: never create a file FerretDB has just removed.
	db, err := sql.Open("sqlite", "file:"+path+"?mode=rw&_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	rows, err := db.QueryContext(ctx, `SELECT t.name FROM sqlite_master t
		WHERE t.type = 'table' AND t.name NOT LIKE '\_ferretdb\_%' ESCAPE '\'
		AND NOT EXISTS (SELECT 1 FROM sqlite_master i WHERE i.type = 'index' AND i.tbl_name = t.name AND i.name = t.name || ?)`, idIndexSuffix)
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	var tables []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return err
		}
		tables = append(tables, name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, t := range tables {
		if !hasDocColumn(ctx, db, t) {
			continue
		}
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (_ferretdb_sjson->'$._id')`, t+idIndexSuffix, t)
		if _, err := db.ExecContext(ctx, q); err != nil && !strings.Contains(err.Error(), "no such table") {
			return fmt.Errorf("index %s: %w", t, err)
		}
	}
	return nil
}

// hasDocColumn reports whether table t is a FerretDB collection table.
func hasDocColumn(ctx context.Context, db *sql.DB, t string) bool {
	rows, err := db.QueryContext(ctx, fmt.Sprintf(`SELECT name FROM pragma_table_info(%s)`, quoteString(t)))
	if err != nil {
		return false
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		if rows.Scan(&name) == nil && name == "_ferretdb_sjson" {
			return true
		}
	}
	return false
}

func quoteString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
