package embedded

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// TestNoTCPListener plays a local user of the machine against the embedded
// database, started as the node starts it: any TCP port it listens on is
// reachable by every local account with no credentials and bypasses the
// proxy (no capture, so replication never sees the write). The database
// must listen only on a Unix socket that only this account can reach: mode
// 0600, in a directory of mode 0700.
func TestNoTCPListener(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	before := ownTCPListeners(t)
	s, err := Start(ctx, filepath.Join(t.TempDir(), "mongo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	for _, addr := range ownTCPListeners(t) {
		if contains(before, addr) {
			continue
		}
		// The attack: straight to the database, no proxy in between.
		err := writeDirect(ctx, "mongodb://"+addr+"/?directConnection=true")
		t.Errorf("the embedded database listens on TCP %s, which any local user can reach (a direct write through it: err=%v)", addr, err)
	}

	sock := socketPath(t, s.URI())
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatalf("the database's socket: %v", err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s: mode %v, want a socket of mode 0600", sock, fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(sock))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory %s: mode %v, want 0700", filepath.Dir(sock), di.Mode().Perm())
	}
	// The owner (the node) still reaches it.
	if err := writeDirect(ctx, s.URI()); err != nil {
		t.Errorf("writing through %s: %v", s.URI(), err)
	}
}

// TestStaleSocketAndLongPath: a socket left by a crash is replaced; a data
// folder whose socket path does not fit a sockaddr_un still gets a private
// socket.
func TestStaleSocketAndLongPath(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "mongo")
	s, err := Start(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	sock := socketPath(t, s.URI())
	// A crash leaves the socket file behind: make one that nobody serves.
	s.Stop()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("no stale socket to test with: %v", err)
	}
	s, err = Start(ctx, dir, nil)
	if err != nil {
		t.Fatalf("restart over a stale socket: %v", err)
	}
	// A second server on the same folder is refused while the first runs.
	if s2, err := Start(ctx, dir, nil); err == nil {
		s2.Stop()
		t.Error("a second server started on a folder another one serves")
	} else if !strings.Contains(err.Error(), "serves") {
		t.Errorf("second server: %v", err)
	}
	if err := writeDirect(ctx, s.URI()); err != nil {
		t.Errorf("after restart: %v", err)
	}
	s.Stop()

	long := filepath.Join(t.TempDir(), strings.Repeat("d", 60), strings.Repeat("e", 60), "mongo")
	s, err = Start(ctx, long, nil)
	if err != nil {
		t.Fatalf("long data folder: %v", err)
	}
	sock = socketPath(t, s.URI())
	if di, err := os.Stat(filepath.Dir(sock)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("socket directory %s: %v %v, want mode 0700", filepath.Dir(sock), di, err)
	}
	if err := writeDirect(ctx, s.URI()); err != nil {
		t.Errorf("long data folder: %v", err)
	}
	s.Stop()
	if _, err := os.Stat(filepath.Dir(sock)); !os.IsNotExist(err) {
		t.Errorf("the short socket directory %s outlived Stop: %v", filepath.Dir(sock), err)
	}
}

func writeDirect(ctx context.Context, uri string) error {
	c, err := mongo.Connect(options.Client().ApplyURI(uri).SetTimeout(10 * time.Second))
	if err != nil {
		return err
	}
	defer func() { _ = c.Disconnect(context.Background()) }()
	_, err = c.Database("edgenode_fleet").Collection("tls").InsertOne(ctx, bson.D{{Key: "v", Value: "forged"}})
	return err
}

// socketPath is the Unix socket a mongodb:// URI names (the host, escaped).
func socketPath(t *testing.T, uri string) string {
	t.Helper()
	host, _, _ := strings.Cut(strings.TrimPrefix(uri, "mongodb://"), "/")
	p, err := url.PathUnescape(host)
	if err != nil || !strings.HasPrefix(p, "/") || !strings.HasSuffix(p, ".sock") {
		t.Fatalf("URI %s does not name a Unix socket (%q, %v)", uri, p, err)
	}
	return p
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// ownTCPListeners lists the TCP sockets in LISTEN state that this process
// holds (the network namespace's tables filtered by this process's fds).
func ownTCPListeners(t *testing.T) []string {
	t.Helper()
	own := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			own[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] != "0A" || !own[fs[9]] {
				continue
			}
			out = append(out, procAddr(t, fs[1]))
		}
		f.Close()
	}
	return out
}

// procAddr decodes /proc/net/tcp's "0100007F:1F90" (the address in host
// byte order per 32-bit word).
func procAddr(t *testing.T, s string) string {
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
	ip := net.IP(b)
	return net.JoinHostPort(ip.String(), fmt.Sprint(port))
}
