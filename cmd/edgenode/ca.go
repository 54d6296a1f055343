package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"

	"github.com/edgenode/edgenode/internal/mesh/pki"
)

// caCommand manages the cluster CA that authenticates peer links:
//
//	edgenode ca init  --dir DIR
//	edgenode ca issue --dir DIR --node ID [--out DIR] [--host NAME_OR_IP,...]
func caCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: edgenode ca init --dir DIR | edgenode ca issue --dir DIR --node ID [--out DIR] [--host H,...]")
		return 2
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("ca "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "ca", "folder holding the CA (ca.crt, ca.key)")
	switch sub {
	case "init":
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if err := pki.InitCA(*dir); err != nil {
			fmt.Fprintln(stderr, "edgenode:", err)
			return 1
		}
		fmt.Fprintf(stdout, "created cluster CA in %s (keep %s/%s secret and off the nodes)\n", *dir, *dir, pki.CAKeyName)
		return 0
	case "issue":
		id := fs.String("node", "", "node id (required; the certificate's identity)")
		out := fs.String("out", "", "output folder (default: the CA folder)")
		hosts := fs.String("host", "", "the node's public IP addresses and any DNS names, comma-separated; "+
			"the other nodes name it in DNS answers only for addresses listed here")
		if err := fs.Parse(args); err != nil {
			return 2
		}
		if *id == "" {
			fmt.Fprintln(stderr, "edgenode ca issue: --node is required")
			return 2
		}
		if *out == "" {
			*out = *dir
		}
		var hs []string
		for _, h := range strings.Split(*hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hs = append(hs, h)
			}
		}
		certPath, keyPath, err := pki.IssueNode(*dir, *id, *out, hs)
		if err != nil {
			fmt.Fprintln(stderr, "edgenode:", err)
			return 1
		}
		fmt.Fprintf(stdout, "issued %s and %s for node %q\n", certPath, keyPath, *id)
		if !slices.ContainsFunc(hs, func(h string) bool { return net.ParseIP(h) != nil }) {
			fmt.Fprintln(stderr, "edgenode ca issue: warning: no IP address in --host: the other nodes will leave this node out "+
				"of their DNS answers (they name a node only at addresses its certificate lists)")
		}
		return 0
	}
	fmt.Fprintf(stderr, "edgenode ca: unknown subcommand %q (init, issue)\n", sub)
	return 2
}
