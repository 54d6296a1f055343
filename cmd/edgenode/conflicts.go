package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgenode/edgenode/internal/config"
)

const conflictsUsage = `usage:
  edgenode conflicts list [FLAGS]                          the unique-key collisions this node parked
  edgenode conflicts show ID [FLAGS]                       one, with this node's copy and what it collides with
  edgenode conflicts resolve ID --keep stored|parked [FLAGS]
                                                           settle it on every node (the resolution replicates)
flags:
  --config FILE      the node's config: its admin address and token (admin.token, else DATA_DIR/publish.secret)
  --admin HOST:PORT  the admin listener (overrides the config's)
  --token-file FILE  the admin bearer token (overrides the config's; or set EDGENODE_ADMIN_TOKEN)
  --json             print the API's JSON as it is
`

// conflictsCommand is the client of the node's /v1/conflicts routes.
func conflictsCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, conflictsUsage)
		return 2
	}
	sub, args := args[0], args[1:]
	var id string
	switch sub {
	case "list":
	case "show", "resolve":
		if len(args) == 0 || strings.HasPrefix(args[0], "-") {
			fmt.Fprintf(stderr, "edgenode conflicts %s: the conflict ID is missing (see edgenode conflicts list)\n", sub)
			return 2
		}
		id, args = args[0], args[1:]
	default:
		fmt.Fprintf(stderr, "edgenode conflicts: unknown subcommand %q\n%s", sub, conflictsUsage)
		return 2
	}
	fs := flag.NewFlagSet("conflicts "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "the node's config file (none: the embedded single node's defaults)")
	adminAddr := fs.String("admin", "", "admin listener HOST:PORT")
	tokenFile := fs.String("token-file", "", "file holding the admin bearer token")
	raw := fs.Bool("json", false, "print the JSON answer")
	keep := fs.String("keep", "", "resolve: stored or parked")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "edgenode conflicts %s: unexpected argument %q\n", sub, fs.Arg(0))
		return 2
	}
	if sub == "resolve" && *keep != "stored" && *keep != "parked" {
		fmt.Fprintf(stderr, "edgenode conflicts resolve: --keep must be stored (the parked op loses everywhere) or parked (the documents it collides with are deleted everywhere), not %q\n", *keep)
		return 2
	}
	base, token, err := adminTarget(*cfgPath, *adminAddr, *tokenFile)
	if err != nil {
		fmt.Fprintf(stderr, "edgenode conflicts: %v\n", err)
		return 1
	}
	method, path := http.MethodGet, "/v1/conflicts"
	switch sub {
	case "show":
		path += "/" + url.PathEscape(id)
	case "resolve":
		method, path = http.MethodPost, path+"/"+url.PathEscape(id)+"/resolve?keep="+url.QueryEscape(*keep)
	}
	body, err := adminCall(method, base+path, token)
	if err != nil {
		fmt.Fprintf(stderr, "edgenode conflicts %s: %v\n", sub, err)
		return 1
	}
	if *raw || sub == "show" {
		var out bytes.Buffer
		if json.Indent(&out, body, "", "  ") != nil {
			out.Write(body)
		}
		fmt.Fprintln(stdout, strings.TrimSpace(out.String()))
		return 0
	}
	switch sub {
	case "list":
		var ans struct {
			Conflicts []struct {
				ID     string          `json:"id"`
				NS     string          `json:"ns"`
				DocID  json.RawMessage `json:"doc_id"`
				Reason string          `json:"reason"`
				Kind   string          `json:"kind"`
				At     time.Time       `json:"at"`
			} `json:"conflicts"`
		}
		if err := json.Unmarshal(body, &ans); err != nil {
			fmt.Fprintf(stderr, "edgenode conflicts list: bad answer: %v\n", err)
			return 1
		}
		if len(ans.Conflicts) == 0 {
			fmt.Fprintln(stdout, "no parked conflicts")
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tNAMESPACE\tDOCUMENT _id\tKIND\tREASON\tPARKED AT")
		for _, c := range ans.Conflicts {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.ID, c.NS, c.DocID, c.Kind, c.Reason, c.At.Format(time.RFC3339))
		}
		_ = tw.Flush()
	case "resolve":
		fmt.Fprintf(stdout, "conflict %s resolved (kept: %s); the resolution replicates to every node\n", id, *keep)
	}
	return 0
}

// adminTarget finds the admin listener's base URL and the bearer token:
// flags first, then the environment, then the node's config.
func adminTarget(cfgPath, addr, tokenFile string) (base, token string, err error) {
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return "", "", err
	}
	if addr == "" {
		addr = cfg.Admin.Listen
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("admin address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1" // a listener on every address is reached on loopback
	}
	base = "http://" + net.JoinHostPort(host, port)
	switch {
	case tokenFile != "":
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", "", fmt.Errorf("--token-file: %w", err)
		}
		token = string(b)
	case os.Getenv("EDGENODE_ADMIN_TOKEN") != "":
		token = os.Getenv("EDGENODE_ADMIN_TOKEN")
	case !cfg.Admin.Token.IsZero():
		if token, err = cfg.Admin.Token.Resolve(); err != nil {
			return "", "", fmt.Errorf("admin.token: %w", err)
		}
	default:
		// The node makes this file at its first start when admin.token is
		// not set; the CLI only reads it.
		file := filepath.Join(cfg.Node.DataDir, "publish.secret")
		b, err := os.ReadFile(file)
		if err != nil {
			return "", "", fmt.Errorf("no admin token: give --token-file, EDGENODE_ADMIN_TOKEN or --config (%w)", err)
		}
		token = string(b)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", "", errors.New("the admin token is empty")
	}
	return base, token, nil
}

// adminCall makes one request to the admin listener and returns the body
// of a 2xx answer; any other answer is an error carrying the API's message.
func adminCall(method, u, token string) ([]byte, error) {
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	c := &http.Client{Timeout: 60 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, fmt.Errorf("%s: %s", resp.Status, msg)
	}
	return body, nil
}
