// Command edgenode runs one node of an edgenode cluster: GeoIP DNS, mesh,
// TLS transport, pubsub, CDN and the multi-master Mongo proxy, in one process.
//
//	edgenode [run] [--config FILE] [--data DIR]   start a node (no config: an embedded single node)
//	edgenode check-config [-print] [-running] FILE print every problem in FILE, its drop-ins and EDGENODE_ variables; exit 1 if any
//	edgenode conflicts list|show ID|resolve ID --keep stored|parked
//	                                              parked unique-key collisions (admin API client)
//	edgenode backup --to DIR|s3://...             back up the running node's Mongo replica
//	edgenode restore --from DIR|s3://...          seed a stopped, new or wiped node from a backup
//	edgenode restore --to-time T|--to-op ORIGIN:SEQ [--dump DIR]
//	                                              point-in-time restore from the op-log archive (mongo.archive)
//	edgenode version                              print the version
//
// A config is the main file, then the drop-ins DIR/conf.d/*.yaml beside it
// in name order, then EDGENODE_ environment variables (see package config).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/edgenode/edgenode/internal/config"
	"github.com/edgenode/edgenode/internal/node"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runNode(args, stderr)
	case "check-config":
		return checkConfig(args, stdout, stderr)
	case "ca":
		return caCommand(args, stdout, stderr)
	case "conflicts":
		return conflictsCommand(args, stdout, stderr)
	case "backup":
		return backupCommand(args, stdout, stderr)
	case "restore":
		return restoreCommand(args, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "edgenode", versionString())
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "edgenode: unknown command %q\n", cmd)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  edgenode [run] [--config FILE] [--data DIR]   start a node (no config: an embedded single node)
  edgenode check-config [-print] [-running] FILE
                                                print every problem in FILE, its drop-ins (conf.d/*.yaml beside it)
                                                and EDGENODE_ variables; exit 1 if any. -print: the merged config,
                                                each value with where it came from (secrets redacted). -running:
                                                also ask the node FILE configures which changed keys a reload
                                                applies and which need a restart
  edgenode ca init --dir DIR                    create the cluster CA
  edgenode ca issue --dir DIR --node ID --host IP[,IP...]
                                                issue a node certificate from the CA in DIR, naming the
                                                node's public addresses (peers put it in DNS only for those)
  edgenode conflicts list|show ID|resolve ID --keep stored|parked
                                                the unique-key collisions the node parked, and
                                                their resolution (replicated): edgenode conflicts
  edgenode backup --to DIR|s3://BUCKET/PREFIX [--config FILE]
                                                copy the running node's Mongo replica and op-log position
  edgenode restore --from DIR|s3://BUCKET/PREFIX [--config FILE] [--data DIR]
                                                seed a stopped, new or wiped node from the newest backup there
  edgenode restore --to-time T|--to-op ORIGIN:SEQ [--from DIR|s3://BUCKET/PREFIX] [--config FILE]
                   [--data DIR | --dump DIR] [--check]
                                                point-in-time restore from the op-log archive (--from, default
                                                mongo.archive.target): the database as it was at time T (RFC 3339
                                                or unix ms), or up to and including op ORIGIN:SEQ, into a new or
                                                wiped data folder, or as Extended JSON files into --dump DIR
  edgenode version                              print the version
`)
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" {
			if len(rev) > 12 {
				rev = rev[:12]
			}
			if dirty {
				rev += "-dirty"
			}
			return "dev-" + rev
		}
		if bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
	}
	return "dev"
}

func runNode(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config file (YAML), with its drop-ins DIR/conf.d/*.yaml; none: the embedded single node (EDGENODE_ variables still apply)")
	dataDir := fs.String("data", "", "data folder (overrides node.data_dir)")
	bootstrap := fs.Bool("bootstrap", false, "this node may start a new cluster's Mongo data alone (sets mongo.bootstrap)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// load reads the config as at start; SIGHUP calls it again.
	load := func() (config.Loaded, error) {
		loaded, err := config.LoadLayers(*cfgPath, os.Environ())
		if err != nil {
			return loaded, err
		}
		if *dataDir != "" {
			loaded.Config.Node.DataDir = *dataDir
		}
		if *bootstrap {
			loaded.Config.Mongo.Bootstrap = true
		}
		return loaded, nil
	}
	loaded, err := load()
	if err != nil {
		fmt.Fprintf(stderr, "edgenode: %v\n", err)
		return 1
	}
	cfg := loaded.Config
	level := new(slog.LevelVar)
	log := newLogger(cfg.Log, level, stderr)
	log.Info("config", "files", loaded.Files, "env", loaded.Env)
	// Signals are wired before anything starts, so a SIGTERM during start-up
	// is a clean stop rather than a kill.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	n, err := node.New(cfg, log, versionString())
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	n.SetReload(func() (config.Config, error) {
		loaded, err := load()
		if err == nil {
			log.Info("config", "files", loaded.Files, "env", loaded.Env)
		}
		return loaded.Config, err
	}, level)
	if err := n.Run(context.Background(), sigs); err != nil {
		log.Error("node failed", "err", err)
		return 1
	}
	return 0
}

// newLogger returns the node's logger, its level in level (validated: a
// reload sets it).
func newLogger(c config.Log, level *slog.LevelVar, w io.Writer) *slog.Logger {
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func checkConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	print := fs.Bool("print", false, "print the effective config, each value with where it came from (secrets redacted)")
	running := fs.Bool("running", false, "also ask the node FILE configures (admin.listen, its token) what a reload would apply and which changed keys need a restart")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: edgenode check-config [-print] [-running] FILE")
		return 2
	}
	loaded, err := config.LoadLayers(fs.Arg(0), os.Environ())
	if err != nil {
		var ps *config.Problems
		if errors.As(err, &ps) {
			fmt.Fprintf(stderr, "%s: %d problem(s)\n", fs.Arg(0), len(ps.List))
			for _, p := range ps.List {
				fmt.Fprintf(stderr, "  %s\n", p)
			}
		} else {
			fmt.Fprintf(stderr, "%s: %v\n", fs.Arg(0), err)
		}
		return 1
	}
	if *print {
		b, err := loaded.Explain()
		if err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		stdout.Write(b)
	}
	fmt.Fprintf(stdout, "%s: ok\n", fs.Arg(0))
	if *running {
		return checkRunning(fs.Arg(0), stdout, stderr)
	}
	return 0
}

// checkRunning asks the node the config at path configures what a reload
// would do with the files it reads (GET /v1/config/pending).
func checkRunning(path string, stdout, stderr io.Writer) int {
	base, token, err := adminTarget(path, "", "")
	if err != nil {
		fmt.Fprintf(stderr, "edgenode check-config -running: %v\n", err)
		return 1
	}
	body, err := adminCall(http.MethodGet, base+"/v1/config/pending", token)
	if err != nil {
		fmt.Fprintf(stderr, "edgenode check-config -running: %v\n", err)
		return 1
	}
	var pd node.Pending
	if err := json.Unmarshal(body, &pd); err != nil {
		fmt.Fprintf(stderr, "edgenode check-config -running: the node's answer: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "running node at %s (config %s):\n", base, pd.ConfigVersion)
	if len(pd.Problems) > 0 {
		fmt.Fprintf(stdout, "  its config files have problems; a reload would change nothing:\n")
		for _, p := range pd.Problems {
			fmt.Fprintf(stdout, "    %s\n", p)
		}
		return 1
	}
	list := func(keys []string) string {
		if len(keys) == 0 {
			return "none"
		}
		return strings.Join(keys, ", ")
	}
	fmt.Fprintf(stdout, "  a reload applies: %s\n", list(pd.Live))
	fmt.Fprintf(stdout, "  changed but needs a restart: %s\n", list(pd.Restart))
	return 0
}
