package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/edgenode/edgenode/internal/testkit"
)

// The Debian package installs, runs and goes away as Debian's policy
// expects, on this very machine: it builds the .deb with scripts/package
// (what `make package` runs) from the test binary, installs it with
// dpkg -i, has systemd-analyze verify the three installed units, starts
// the node exactly as the unit would — ExecStartPre then ExecStart, as the
// unit's user and group, with its EnvironmentFile, umask and the variables
// systemd sets — and waits for /readyz 200. Where systemd is PID 1 it
// starts the service for real instead. Then it upgrades in place (dpkg -i
// again), removes (data, user and conffile stay), and purges (data and
// configuration go, the system user stays, as Debian leaves system users).
//
// It changes the real system (a user, files under /etc, /lib, /usr,
// /var/lib): root only, and skipped where an edgenode package is already
// installed, which it would otherwise replace and purge. The node runs in
// its own network namespace when it can, so the unit's fixed loopback ports
// cannot clash with anything else on the machine.
func TestPackageInstallRunPurge(t *testing.T) {
	if testing.Short() {
		t.Skip("installs a package and starts a node")
	}
	if os.Geteuid() != 0 {
		t.Skip("installs the package into this system with dpkg -i: needs root")
	}
	for _, tool := range []string{"dpkg", "dpkg-deb", "dpkg-statoverride", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: not a Debian system", tool)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "edgenode").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Skipf("an edgenode package is already installed (%s), which this test would replace and purge: dpkg --purge edgenode first", out)
	}
	if _, err := exec.LookPath("adduser"); err != nil {
		t.Fatal("adduser not installed: the package depends on it (apt package adduser; .ci/run installs it)")
	}

	// Build. No compression: xz of a 50 MB binary costs a minute of CPU on
	// a loaded machine, and what is tested is the archive's content.
	out := t.TempDir()
	build := exec.Command("../../scripts/package", binPath, "0.0.0-test", out)
	build.Env = append(os.Environ(), "DEB_COMPRESS=none")
	b, err := build.Output()
	if err != nil {
		t.Fatalf("scripts/package: %v\n%s", err, exitStderr(err))
	}
	deb := strings.TrimSpace(string(b))
	t.Logf("built %s", deb)

	t.Cleanup(func() { dpkg(t, "--purge", "edgenode") })
	dpkg(t, "-i", deb)

	// What the install made.
	u, err := user.Lookup("edgenode")
	if err != nil {
		t.Fatalf("no edgenode user after install: %v", err)
	}
	if uid, _ := strconv.Atoi(u.Uid); uid == 0 || uid >= 1000 {
		t.Errorf("edgenode user has uid %s: want a system user (1..999)", u.Uid)
	}
	if u.HomeDir != "/var/lib/edgenode" {
		t.Errorf("edgenode's home is %q, want /var/lib/edgenode", u.HomeDir)
	}
	wantOwner(t, "/var/lib/edgenode", "edgenode", "edgenode", 0o750|os.ModeDir)
	wantOwner(t, "/etc/edgenode", "root", "edgenode", 0o750|os.ModeDir)
	wantOwner(t, "/etc/edgenode/conf.d", "root", "edgenode", 0o750|os.ModeDir)
	wantOwner(t, "/etc/edgenode/edgenode.yaml", "root", "edgenode", 0o640)
	if cf := query(t, "${Conffiles}"); !strings.Contains(cf, "/etc/edgenode/edgenode.yaml ") {
		t.Errorf("conffiles = %q, want /etc/edgenode/edgenode.yaml", cf)
	}
	if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/edgenode.service"); err != nil {
		t.Errorf("edgenode.service not enabled on install: %v", err)
	}
	if _, err := os.Lstat("/etc/systemd/system/timers.target.wants/edgenode-geoipupdate.timer"); err == nil {
		t.Error("the GeoIP timer is enabled on install: it needs a MaxMind account, so must start disabled")
	}

	verifyInstalledUnits(t)

	unit := parseUnit(t, "/lib/systemd/system/edgenode.service")
	if systemdRuns() {
		runUnderSystemd(t)
	} else {
		runLikeUnit(t, unit, u)
	}
	if _, err := os.Stat("/var/lib/edgenode/oplog.db"); err != nil {
		t.Errorf("the node left no op log in /var/lib/edgenode: %v", err)
	}

	// An upgrade (the same version again runs the same paths: prerm
	// upgrade, postinst configure with the old version) keeps data,
	// permissions and enablement.
	dpkg(t, "-i", deb)
	wantOwner(t, "/etc/edgenode/edgenode.yaml", "root", "edgenode", 0o640)
	if _, err := os.Stat("/var/lib/edgenode/oplog.db"); err != nil {
		t.Errorf("upgrade lost the data: %v", err)
	}
	if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/edgenode.service"); err != nil {
		t.Errorf("upgrade disabled the unit: %v", err)
	}

	// Remove: the program goes, data and configuration stay.
	dpkg(t, "-r", "edgenode")
	for _, gone := range []string{"/usr/bin/edgenode", "/lib/systemd/system/edgenode.service"} {
		if _, err := os.Stat(gone); err == nil {
			t.Errorf("%s still there after dpkg -r", gone)
		}
	}
	for _, kept := range []string{"/var/lib/edgenode/oplog.db", "/etc/edgenode/edgenode.yaml"} {
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("dpkg -r removed %s: %v", kept, err)
		}
	}

	// Purge: nothing of the package is left but the system user.
	dpkg(t, "--purge", "edgenode")
	for _, gone := range []string{"/var/lib/edgenode", "/etc/edgenode"} {
		if _, err := os.Lstat(gone); err == nil {
			t.Errorf("%s still there after purge", gone)
		}
	}
	links, _ := filepath.Glob("/etc/systemd/system/*edgenode*")
	wants, _ := filepath.Glob("/etc/systemd/system/*/*edgenode*")
	if left := append(links, wants...); len(left) > 0 {
		t.Errorf("unit links left after purge: %v", left)
	}
	if so, _ := exec.Command("dpkg-statoverride", "--list").Output(); bytes.Contains(so, []byte("edgenode")) {
		t.Errorf("statoverrides left after purge:\n%s", so)
	}
	if st, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "edgenode").Output(); strings.Contains(string(st), "installed") || strings.Contains(string(st), "config-files") {
		t.Errorf("package status after purge: %q", st)
	}
	if _, err := user.Lookup("edgenode"); err != nil {
		t.Errorf("purge removed the system user (Debian keeps it, so no new user inherits its uid's files): %v", err)
	}
}

// dpkg runs dpkg with args and fails the test on error. While another
// dpkg or apt holds the lock (someone installing packages on a shared test
// machine) it tries again, for up to 2 minutes.
func dpkg(t testing.TB, args ...string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		cmd := exec.Command("dpkg", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err == nil {
			return
		}
		if bytes.Contains(out, []byte("lock")) && time.Now().Before(deadline) {
			time.Sleep(time.Second)
			continue
		}
		t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func query(t *testing.T, format string) string {
	t.Helper()
	out, err := exec.Command("dpkg-query", "-W", "-f="+format, "edgenode").Output()
	if err != nil {
		t.Fatalf("dpkg-query %s: %v", format, err)
	}
	return string(out)
}

// exitStderr is what a command run with Output wrote on stderr.
func exitStderr(err error) []byte {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.Stderr
	}
	return nil
}

// wantOwner checks path's owner, group and mode (type and permissions).
func wantOwner(t *testing.T, path, owner, group string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	st := fi.Sys().(*syscall.Stat_t)
	o, _ := user.LookupId(strconv.Itoa(int(st.Uid)))
	g, _ := user.LookupGroupId(strconv.Itoa(int(st.Gid)))
	var on, gn string
	if o != nil {
		on = o.Username
	}
	if g != nil {
		gn = g.Name
	}
	if on != owner || gn != group || fi.Mode() != mode {
		t.Errorf("%s is %s:%s %v, want %s:%s %v", path, on, gn, fi.Mode(), owner, group, mode)
	}
}

// verifyInstalledUnits has systemd check the three installed units (any
// output is a warning and fails, as in TestSystemdUnitIsHardenedAndVerifies).
// verify also checks that each ExecStart exists: where Debian's geoipupdate
// (contrib) is not installed, the GeoIP units are verified from copies, the
// service's ExecStart made /bin/true and all else unchanged, found first
// on the unit path (the timer names its service, and systemd would load the
// installed one).
func verifyInstalledUnits(t *testing.T) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not installed (apt package systemd; .ci/run installs it)")
	}
	verify := func(env []string, units ...string) {
		cmd := exec.Command(sa, append([]string{"verify"}, units...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			t.Errorf("systemd-analyze verify %v: %v\n%s", units, err, out)
		}
	}
	verify(nil, "/lib/systemd/system/edgenode.service")
	geo := []string{"/lib/systemd/system/edgenode-geoipupdate.service", "/lib/systemd/system/edgenode-geoipupdate.timer"}
	if _, err := os.Stat("/usr/bin/geoipupdate"); err == nil {
		verify(nil, geo...)
		return
	}
	t.Log("geoipupdate not installed: verifying its service with ExecStart=/bin/true")
	dir := t.TempDir()
	var copies []string
	for _, p := range geo {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("ExecStart=/usr/bin/geoipupdate"), []byte("ExecStart=/bin/true"))
		cp := filepath.Join(dir, filepath.Base(p))
		if err := os.WriteFile(cp, b, 0o644); err != nil {
			t.Fatal(err)
		}
		copies = append(copies, cp)
	}
	// The trailing colon: dir, then the usual paths.
	verify([]string{"SYSTEMD_UNIT_PATH=" + dir + ":"}, copies...)
}

// parseUnit returns the [Service] settings of a unit file, each key with
// its values in order.
func parseUnit(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			section = line
		case section == "[Service]":
			k, v, _ := strings.Cut(line, "=")
			m[k] = append(m[k], v)
		}
	}
	return m
}

// systemdRuns reports whether systemd is PID 1 (what `ps -p 1` shows,
// without needing procps).
func systemdRuns() bool {
	comm, err := os.ReadFile("/proc/1/comm")
	return err == nil && strings.TrimSpace(string(comm)) == "systemd"
}

// runUnderSystemd starts the installed service for real and stops it.
func runUnderSystemd(t *testing.T) {
	t.Helper()
	t.Log("systemd is PID 1: starting edgenode.service")
	for _, args := range [][]string{{"daemon-reload"}, {"start", "edgenode.service"}} {
		if out, err := exec.Command("systemctl", args...).CombinedOutput(); err != nil {
			t.Fatalf("systemctl %v: %v\n%s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("systemctl", "stop", "edgenode.service").Run() })
	get := (&http.Client{Timeout: 2 * time.Second}).Get
	testkit.WaitFor(t, 40*time.Second, "/readyz 200 from the started service", func() bool {
		return readyzVia(get) == http.StatusOK
	})
	if out, err := exec.Command("systemctl", "stop", "edgenode.service").CombinedOutput(); err != nil {
		t.Fatalf("systemctl stop: %v\n%s", err, out)
	}
}

// runLikeUnit runs the unit's ExecStartPre and ExecStart as systemd would
// without systemd: as User and Group with their supplementary groups
// (setpriv), in /, with the unit's UMask, the EnvironmentFile's variables
// and those systemd sets for a service with a User and a StateDirectory.
// The sandboxing (ProtectSystem and the rest) needs systemd and is left
// out; systemd-analyze verify has checked it.
func runLikeUnit(t *testing.T, unit map[string][]string, u *user.User) {
	t.Helper()
	one := func(k string) string {
		if len(unit[k]) != 1 {
			t.Fatalf("unit has %s=%v, want one", k, unit[k])
		}
		return unit[k][0]
	}
	if one("User") != "edgenode" || one("Group") != "edgenode" {
		t.Fatalf("unit runs as %s:%s, want edgenode:edgenode", one("User"), one("Group"))
	}
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + u.HomeDir, "USER=" + u.Username, "LOGNAME=" + u.Username, "SHELL=/usr/sbin/nologin",
		"STATE_DIRECTORY=/var/lib/" + one("StateDirectory"),
	}
	for _, ef := range unit["EnvironmentFile"] {
		path, optional := strings.CutPrefix(ef, "-")
		b, err := os.ReadFile(path)
		if err != nil {
			if optional && os.IsNotExist(err) {
				continue
			}
			t.Fatalf("EnvironmentFile %s: %v", path, err)
		}
		env = append(env, parseEnvFile(b)...)
	}
	env = append(env, unit["Environment"]...)

	// Its own network namespace, when there is one to be had: the unit's
	// ports are fixed (127.0.0.1:9090, :8443, :8053, :27018).
	var prefix []string
	get := (&http.Client{Timeout: 2 * time.Second}).Get
	ns := fmt.Sprintf("edgenode-pkg-%d", os.Getpid())
	if exec.Command("ip", "netns", "add", ns).Run() == nil {
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip -n %s link set lo up: %v\n%s", ns, err, out)
		}
		prefix = []string{"ip", "netns", "exec", ns}
		get = (&http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: netnsDialer("/run/netns/" + ns)}}).Get
	} else {
		t.Log("no network namespaces here: the node runs on the host's loopback")
	}
	prefix = append(prefix, "setpriv", "--reuid="+one("User"), "--regid="+one("Group"), "--init-groups", "--",
		"/bin/sh", "-c", `umask "$0" && exec "$@"`, one("UMask"))
	command := func(exe string) *exec.Cmd {
		argv := append(append([]string{}, prefix...), strings.Fields(exe)...)
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env, cmd.Dir = env, "/"
		return cmd
	}

	for _, pre := range unit["ExecStartPre"] {
		if out, err := command(pre).CombinedOutput(); err != nil {
			t.Fatalf("ExecStartPre %s: %v\n%s", pre, err, out)
		}
	}
	logs := &testkit.LogBuffer{}
	cmd := command(one("ExecStart"))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("node output:\n%s", logs.String())
		}
	})
	testkit.WaitFor(t, 40*time.Second, "/readyz 200 from the unit's ExecStart", func() bool {
		select {
		case <-done:
			t.Fatalf("ExecStart exited: %v", cmd.ProcessState)
		default:
		}
		return readyzVia(get) == http.StatusOK
	})
	// ip, setpriv and sh each exec the next: the pid is the node's.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Uid:\t" + u.Uid + "\t"; !bytes.Contains(status, []byte(want)) {
		t.Errorf("node does not run as edgenode (uid %s):\n%s", u.Uid, status)
	}
	// systemd stops it with KillSignal: a clean drain exits 0.
	if one("KillSignal") != "SIGTERM" {
		t.Fatalf("KillSignal=%s", one("KillSignal"))
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("node did not exit within 30s of SIGTERM")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("node exited %d after SIGTERM, want 0", code)
	}
}

// readyzVia returns the admin listener's /readyz status (0: no answer).
func readyzVia(get func(string) (*http.Response, error)) int {
	resp, err := get("http://127.0.0.1:9090/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// parseEnvFile reads KEY=VALUE lines as systemd's EnvironmentFile does,
// for the simple cases: comments, blank lines, one level of quotes.
func parseEnvFile(b []byte) []string {
	var env []string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env = append(env, strings.TrimSpace(k)+"="+v)
	}
	return env
}

// netnsDialer dials from inside the network namespace at nsPath: a socket
// belongs to the namespace of the thread that made it, so each dial runs
// on a thread of its own that joins the namespace and is never given back
// (the goroutine ends locked, so the runtime ends the thread with it and no
// other goroutine ever runs in the namespace).
func netnsDialer(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			f, err := os.Open(nsPath)
			if err != nil {
				ch <- result{err: err}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- result{err: fmt.Errorf("setns %s: %w", nsPath, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, network, addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}
