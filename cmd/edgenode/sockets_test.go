package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/testkit"
)

// procSocket is one TCP socket of a process, from /proc/PID/net/tcp{,6}.
type procSocket struct {
	local, remote string
	listen        bool
}

// tcpSockets lists the TCP sockets process pid holds: the network
// namespace's tables, filtered by the socket inodes among pid's fds.
func tcpSockets(t *testing.T, pid int) []procSocket {
	t.Helper()
	own := map[string]bool{}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			own[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var out []procSocket
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || !own[fs[9]] {
				continue
			}
			out = append(out, procSocket{local: procAddr(t, fs[1]), remote: procAddr(t, fs[2]), listen: fs[3] == "0A"})
		}
		f.Close()
	}
	return out
}

// procAddr decodes /proc/net/tcp's "0100007F:1F90" (the address in host
// byte order per 32-bit word).
func procAddr(t *testing.T, s string) string {
	t.Helper()
	h, p, _ := strings.Cut(s, ":")
	b, err := hex.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(net.IP(b).String(), fmt.Sprint(port))
}

// TestEmbeddedNodeOpensOnlyConfiguredTCPPorts plays a local user of the
// machine against a real embedded node: every TCP port the process listens
// on is reachable by any local account. Only the configured ones may be
// there: the embedded database's own port would let anyone write to it
// without the proxy (uncaptured, never replicated, the fleet's secrets
// within reach). And the node's own client of the fleet storage must not
// go through the proxy's public listener, where nothing tells it from any
// other local client: it uses an in-process connection.
func TestEmbeddedNodeOpensOnlyConfiguredTCPPorts(t *testing.T) {
	cfg, p := nodeConfig(t, "node: {cron_leader: true}\nmongo: {enabled: true}\n")
	startNode(t, cfg, p)
	// A positive signal that the fleet storage's client is connected and
	// has written: the leader stored the ticket keys through it.
	testkit.WaitFor(t, 60*time.Second, "the leader to store the session-ticket keys", func() bool {
		return strings.Contains(p.out.String(), "ticket keys: rotated")
	})
	configured := []string{p.https, p.admin, p.dns, p.mongo}
	for _, s := range tcpSockets(t, p.cmd.Process.Pid) {
		switch {
		case s.listen && !slices.Contains(configured, s.local):
			// The attack: write straight to that port.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := writeStraightTo(ctx, s.local)
			cancel()
			t.Errorf("the node listens on TCP %s, which is none of its configured addresses %v (a local user's write through it: err=%v)", s.local, configured, err)
		case !s.listen && s.remote == p.mongo:
			t.Errorf("the node reaches its own Mongo proxy over TCP (%s -> %s): the fleet storage's client must use the in-process connection", s.local, s.remote)
		}
	}
	// The database is on a Unix socket only this account can open.
	sock := databaseSocket(t, p)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	di, err := os.Stat(filepath.Dir(sock))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Errorf("database socket %s mode %v in a directory of mode %v, want 0600 in 0700", sock, fi.Mode(), di.Mode().Perm())
	}
}

func writeStraightTo(ctx context.Context, addr string) error {
	c, err := mongo.Connect(options.Client().ApplyURI("mongodb://" + addr + "/?directConnection=true").SetTimeout(10 * time.Second))
	if err != nil {
		return err
	}
	defer func() { _ = c.Disconnect(context.Background()) }()
	_, err = c.Database("edgenode_fleet").Collection("tls").InsertOne(ctx, bson.D{{Key: "_id", Value: "forged"}})
	return err
}

// databaseURI is the embedded database's URI, from the node's log.
func databaseURI(t *testing.T, p *nodeProc) string {
	t.Helper()
	out := p.out.String()
	at := strings.LastIndex(out, "embedded ferretdb started")
	if at < 0 {
		t.Fatalf("no embedded database in the log:\n%s", out)
	}
	line, _, _ := strings.Cut(out[at:], "\n")
	_, uri, ok := strings.Cut(line, "uri=")
	if !ok {
		t.Fatalf("no uri in %q", line)
	}
	uri, _, _ = strings.Cut(uri, " ")
	return strings.Trim(uri, `"`)
}

// databaseSocket is the Unix socket of the embedded database.
func databaseSocket(t *testing.T, p *nodeProc) string {
	t.Helper()
	uri := databaseURI(t, p)
	host, _, _ := strings.Cut(strings.TrimPrefix(uri, "mongodb://"), "/")
	path := strings.ReplaceAll(host, "%2F", "/")
	if !strings.HasPrefix(path, "/") || !strings.HasSuffix(path, ".sock") {
		t.Fatalf("the embedded database is not on a Unix socket: %s", uri)
	}
	return path
}
