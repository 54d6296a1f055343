// Command pgferret starts a FerretDB-on-PostgreSQL upstream set for the
// benchmarks: one PostgreSQL server (Debian's postgresql, its data in a new
// temporary folder, listening on a Unix socket only) and n FerretDB 1.24.2
// processes, each over its own database, listening on free 127.0.0.1 ports
// (internal/testkit.StartPGFerrets: the same servers the tests use). It
// prints the FerretDB URIs, comma-separated, on one line, then waits; on
// SIGTERM or SIGINT it stops them all and removes the folder. Nothing is
// downloaded: PostgreSQL and FerretDB must be installed ($TOOLS_DIR or
// <repo>/tools for ferretdb; scripts/install-test-tools).
//
// With -id-index every database gets the event trigger of
// testkit.Postgres.IndexIDs: each table FerretDB creates gets a GIN index
// FerretDB 1.24's {_id: v} queries can use (without it they scan the
// table).
//
//	go run ./scripts/pgferret [-n 3] [-id-index]
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/edgenode/edgenode/internal/testkit"
)

func main() {
	n := flag.Int("n", 1, "FerretDB processes (one database each)")
	indexIDs := flag.Bool("id-index", false, "index _id so that FerretDB's {_id: v} queries do not scan the table (testkit.Postgres.IndexIDs)")
	flag.Parse()
	if *n < 1 {
		fmt.Fprintln(os.Stderr, "pgferret: -n must be at least 1")
		os.Exit(2)
	}
	// Signals first: a SIGTERM during start-up stops what started.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	start := testkit.StartPGFerrets
	if *indexIDs {
		start = testkit.StartPGFerretsIndexed
	}
	s, err := start(*n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgferret:", err)
		os.Exit(1)
	}
	fmt.Println(strings.Join(s.URIs(), ","))
	<-sig
	s.Stop()
}
