package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/edgenode/edgenode/internal/backup"
	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/node"
	"github.com/edgenode/edgenode/internal/replica"
)

// s3Flags are the S3 options of backup and restore. Credentials come from
// the SDK's standard chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
// ~/.aws/credentials, an instance role).
func s3Flags(fs *flag.FlagSet) func() backup.S3Options {
	endpoint := fs.String("s3-endpoint", "", "S3 endpoint URL for an S3-compatible service (default: AWS)")
	region := fs.String("s3-region", "us-east-1", "S3 region")
	pathStyle := fs.String("s3-path-style", "auto", "path-style S3 addressing: true, false, or auto (true with --s3-endpoint)")
	return func() backup.S3Options {
		o := backup.S3Options{Endpoint: *endpoint, Region: *region}
		switch *pathStyle {
		case "true":
			o.PathStyle = true
		case "auto":
			o.PathStyle = *endpoint != ""
		}
		return o
	}
}

// loadConfig loads the config of a command that acts on a node.
func loadConfig(path, dataDir string, stderr io.Writer) (*config.Config, bool) {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintf(stderr, "edgenode: %v\n", err)
		return nil, false
	}
	if dataDir != "" {
		cfg.Node.DataDir = dataDir
	}
	return &cfg, true
}

// interruptible is a context ended by SIGINT or SIGTERM.
func interruptible() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// backupCommand takes a backup of a running node's Mongo replica:
//
//	edgenode backup --to DIR|s3://BUCKET/PREFIX [--config FILE]
func backupCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("backup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "the node's config file (where its admin listener and token are)")
	dataDir := fs.String("data", "", "the node's data folder (overrides node.data_dir; holds publish.secret)")
	to := fs.String("to", "", "where to put the backup: a folder or s3://BUCKET/PREFIX (required)")
	adminURL := fs.String("admin", "", "the node's admin URL (default: from admin.listen)")
	tokenFile := fs.String("token-file", "", "file holding the admin token (default: admin.token, or DATA/publish.secret)")
	s3opts := s3Flags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *to == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: edgenode backup --to DIR|s3://BUCKET/PREFIX [--config FILE] [--data DIR] [--admin URL] [--token-file FILE] [--s3-endpoint URL]")
		return 2
	}
	cfg, ok := loadConfig(*cfgPath, *dataDir, stderr)
	if !ok {
		return 1
	}
	url, token, err := node.AdminEndpoint(cfg)
	if *tokenFile != "" {
		var b []byte
		b, err = os.ReadFile(*tokenFile)
		token = strings.TrimSpace(string(b))
	}
	if err != nil {
		fmt.Fprintf(stderr, "edgenode backup: %v\n", err)
		return 1
	}
	if *adminURL != "" {
		url = *adminURL
	}
	ctx, cancel := interruptible()
	defer cancel()
	st, err := backup.Open(ctx, *to, s3opts())
	if err != nil {
		fmt.Fprintf(stderr, "edgenode backup: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "backup: reading the replica of the node at %s into %s\n", url, st)
	start := time.Now()
	m, id, err := backup.TakeFrom(ctx, http.DefaultClient, url, token, st, func(m backup.Manifest) {
		p := m.Parts[len(m.Parts)-1]
		fmt.Fprintf(stdout, "  %s  %s (%d items)\n", p.Name, size(p.Bytes), p.Items)
	})
	if err != nil {
		fmt.Fprintf(stderr, "edgenode %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "backup %s done in %v: node %s, origin %s\n", id, time.Since(start).Round(time.Millisecond), m.Node, m.Origin)
	fmt.Fprintf(stdout, "  %s\n", counts(m.Counts))
	fmt.Fprintf(stdout, "  %s of items, %s stored in %d part(s) + %s\n", size(m.RawBytes), size(m.Bytes), len(m.Parts), backup.ManifestName)
	fmt.Fprintf(stdout, "  op-log position: %s\n", vector(m.Vector))
	return 0
}

// restoreCommand seeds a stopped, new or wiped node from a backup:
//
//	edgenode restore --from DIR|s3://BUCKET/PREFIX [--config FILE] [--data DIR]
const restoreUsage = `usage:
  edgenode restore --from DIR|s3://BUCKET/PREFIX [--config FILE] [--data DIR] [--check] [--force]
      seed a stopped, new or wiped node from a backup (the newest there)
  edgenode restore --to-time T|--to-op ORIGIN:SEQ [--from DIR|s3://BUCKET/PREFIX] [--config FILE] [--data DIR | --dump DIR] [--check]
      point-in-time restore from the op-log archive (--from, default mongo.archive.target)
`

func restoreCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("restore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "the node's config file")
	dataDir := fs.String("data", "", "the node's data folder (overrides node.data_dir); must hold no op log")
	fs.StringVar(dataDir, "data-dir", "", "same as --data")
	from := fs.String("from", "", "the backup: its folder, or a folder or s3://BUCKET/PREFIX of backups (the newest is taken); required unless --to-time/--to-op, which read the op-log archive here (default mongo.archive.target)")
	check := fs.Bool("check", false, "only check the backup, or with --to-time/--to-op the base snapshot and segments the restore needs (checksums, sizes, counts); change nothing")
	force := fs.Bool("force", false, "restore a backup older than mongo.log_retention (see the README's Backups)")
	toTime := fs.String("to-time", "", "point-in-time restore from the op-log archive (--from, default mongo.archive.target): the database as it was at this time (RFC 3339, or unix milliseconds)")
	toOp := fs.String("to-op", "", "point-in-time restore up to and including the archived op ORIGIN:SEQ")
	dump := fs.String("dump", "", "with --to-time/--to-op: write the restored documents as Extended JSON into this folder (one DB.COLLECTION.json per collection) instead of seeding the data folder")
	s3opts := s3Flags(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), restoreUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *toTime != "" || *toOp != "" {
		if fs.NArg() != 0 || (*toTime != "" && *toOp != "") {
			fmt.Fprintln(stderr, "usage: edgenode restore --to-time T|--to-op ORIGIN:SEQ [--from DIR|s3://BUCKET/PREFIX] [--config FILE] [--data DIR | --dump DIR] [--check]")
			return 2
		}
		cfg, ok := loadConfig(*cfgPath, *dataDir, stderr)
		if !ok {
			return 1
		}
		return pitrRestore(pitrArgs{cfg: cfg, from: *from, s3: s3opts, s3Set: flagSet(fs, "s3-endpoint"), toTime: *toTime, toOp: *toOp, dump: *dump, check: *check}, stdout, stderr)
	}
	if *from == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: edgenode restore --from DIR|s3://BUCKET/PREFIX [--config FILE] [--data DIR] [--check] [--s3-endpoint URL]")
		return 2
	}
	cfg, ok := loadConfig(*cfgPath, *dataDir, stderr)
	if !ok {
		return 1
	}
	ctx, cancel := interruptible()
	defer cancel()
	fail := func(err error) int {
		fmt.Fprintf(stderr, "edgenode restore: %v\n", err)
		fmt.Fprintln(stderr, "edgenode restore: refused; nothing was restored")
		return 1
	}
	st, err := backup.Open(ctx, *from, s3opts())
	if err != nil {
		return fail(err)
	}
	id, m, err := backup.Find(ctx, st)
	if err != nil {
		return fail(err)
	}
	where := st.String()
	if id != "" {
		where += "/" + id
	}
	age := time.Since(m.TakenAt).Round(time.Second)
	fmt.Fprintf(stdout, "restore: backup %s\n  taken %s (%v ago) on node %s, origin %s\n  %s; %s in %d part(s)\n",
		where, m.TakenAt.Format(time.RFC3339), age, m.Node, m.Origin, counts(m.Counts), size(m.Bytes), len(m.Parts))
	if err := backup.Verify(ctx, st, id, m); err != nil {
		return fail(err)
	}
	fmt.Fprintln(stdout, "restore: backup checked: every part's size, SHA-256 and item count match the manifest")
	if *check {
		return 0
	}
	// Peers keep every origin's ops for log_retention. Past it, a live
	// peer whose log was trimmed above the backup's position makes the
	// node resync fully anyway, but the ops of a node gone since (this
	// node's previous incarnation among them) that every peer trimmed
	// would be missing for good: a full initial sync is the safe way.
	if ret := cfg.Mongo.LogRetention; ret > 0 && age > ret && !*force {
		return fail(fmt.Errorf("the backup is %v old, older than mongo.log_retention (%v): the peers may no longer hold every operation written since. "+
			"Start the node without restoring (it makes a full initial sync), or restore a newer backup; --force restores it anyway (see the README's Backups)", age, ret))
	}
	log := newLogger(config.Log{Level: "warn", Format: cfg.Log.Format}, new(slog.LevelVar), stderr).With("cmd", "restore")
	var refused []replica.RefusedItem
	start := time.Now()
	origin, err := node.RestoreMongo(ctx, cfg, log, func(ctx context.Context, core *replica.Replica) error {
		fmt.Fprintf(stdout, "restore: loading into %s as origin %s\n", cfg.Node.DataDir, core.Origin())
		var lerr error
		refused, lerr = backup.Load(ctx, st, id, m, core, nil)
		return lerr
	})
	if err != nil {
		fmt.Fprintf(stderr, "edgenode restore: %v\n", err)
		fmt.Fprintln(stderr, "edgenode restore: failed; the data folder is left as a wiped node's (run restore again, or start the node for a full initial sync)")
		return 1
	}
	if len(refused) > 0 {
		nss := map[string]int{}
		for _, r := range refused {
			nss[r.NS+" ("+r.Why+")"]++
		}
		fmt.Fprintf(stdout, "restore: %d item(s) not stored, of namespaces this node does not replicate: %v\n", len(refused), nss)
	}
	fmt.Fprintf(stdout, "restore done in %v: %s is a synced replica at the backup's op-log position, origin %s\n", time.Since(start).Round(time.Millisecond), cfg.Node.DataDir, origin)
	fmt.Fprintf(stdout, "  position: %s\n", vector(m.Vector))
	fmt.Fprintf(stdout, "  start the node: its peers send what was written since the backup (they keep ops for mongo.log_retention, %v; from an older backup the node makes a full initial sync by itself)\n", cfg.Mongo.LogRetention)
	return 0
}

func counts(c backup.Counts) string {
	return fmt.Sprintf("%d documents, %d collections, %d indexes, %d tombstones, %d DDL records", c.Documents, c.Collections, c.Indexes, c.Tombstones, c.DDL)
}

func vector(v map[string]uint64) string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, v[k])
	}
	if b.Len() == 0 {
		return "(empty)"
	}
	return b.String()
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
