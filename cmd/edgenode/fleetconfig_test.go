package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/edgenode/edgenode/internal/testkit"
)

// TestOneConfigForTheFleet: a node started from the shared main file, two
// drop-ins in conf.d beside it and EDGENODE_ variables answers as the
// layers say (drop-ins over the main file in name order, variables over
// both), and check-config -print names each value's source. Then a drop-in
// with an unknown key and a variable naming no key each stop `run` before
// it touches anything, named.
func TestOneConfigForTheFleet(t *testing.T) {
	main, p := nodeConfig(t, "")
	dir := t.TempDir()
	path := filepath.Join(dir, "edgenode.yaml")
	confd := filepath.Join(dir, "conf.d")
	write := func(name, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(path, main)
	write(filepath.Join(confd, "10-site.yaml"), `node:
  region: site-region
  latitude: 10
dns:
  zones:
    - origin: fleet.test.
      ns: [ns1.fleet.test.]
      records:
        - {name: www, type: A, value: 192.0.2.7}
  dynamic:
    - name: app.fleet.test.
mongo:
  enabled: false
`)
	write(filepath.Join(confd, "20-node.yaml"), "node:\n  latitude: 48.1\n")
	write(filepath.Join(confd, "20-node.yaml.dpkg-old"), "bogus: 1\n") // never read

	// Per-host values from the environment: the id, and listen addresses
	// other than the main file's (the node must answer there, not there).
	p.https = fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t, "127.0.0.1"))
	p.admin = fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t, "127.0.0.1"))
	p.env = []string{
		"EDGENODE_NODE__ID=env-node",
		"EDGENODE_HTTPS__LISTEN=" + p.https,
		"EDGENODE_ADMIN__LISTEN=" + p.admin,
		`EDGENODE_NODE__TAGS=["edge", "fleet"]`,
	}
	env := append(os.Environ(), p.env...)

	out, err := command(env, "check-config", "-print", path).CombinedOutput()
	if err != nil {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	for _, want := range []string{
		"  id: env-node # env EDGENODE_NODE__ID\n",
		"  region: site-region # " + filepath.Join(confd, "10-site.yaml") + ":2\n",
		"  latitude: 48.1 # " + filepath.Join(confd, "20-node.yaml") + ":2\n",
		"  data_dir: " + p.dataDir + " # " + path + ":",
		"  listen: " + p.https + " # env EDGENODE_HTTPS__LISTEN\n",
		"  tags: [edge, fleet] # env EDGENODE_NODE__TAGS\n",
		"  zones: # " + filepath.Join(confd, "10-site.yaml") + ":6\n",
		"  longitude: 0 # default\n",
		path + ": ok\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("check-config -print lacks %q:\n%s", want, out)
		}
	}

	startProc(t, nil, nil, path, p)
	waitNodeReady(t, p)
	_, body := get(t, http.DefaultClient, "http://"+p.admin+"/status.json")
	for _, want := range []string{`"id": "env-node"`, `"region": "site-region"`, `"latitude": 48.1`, `"fleet"`} {
		if !strings.Contains(body, want) {
			t.Errorf("status.json lacks %s: %s", want, body)
		}
	}
	c := &mdns.Client{Net: "udp"}
	for name, want := range map[string]string{"www.fleet.test.": "192.0.2.7", "env-node.nodes.fleet.test.": "127.0.0.1"} {
		q := new(mdns.Msg)
		q.SetQuestion(name, mdns.TypeA)
		r, _, err := c.Exchange(q, p.dns)
		if err != nil || len(r.Answer) != 1 {
			t.Errorf("%s: %v %v", name, r, err)
			continue
		}
		if a, ok := r.Answer[0].(*mdns.A); !ok || a.A.String() != want {
			t.Errorf("%s: answer %v, want %s", name, r.Answer[0], want)
		}
	}
	resp, _ := get(t, httpsClient(false), "https://"+p.https+"/")
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HTTPS on the address from the environment: %s", resp.Status)
	}
	if !strings.Contains(p.out.String(), "msg=config") || !strings.Contains(p.out.String(), "20-node.yaml") {
		t.Errorf("the node does not log its layers:\n%s", p.out.String())
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(60 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}

	// A drop-in with an unknown key, or a variable that names no key,
	// stops the node at once, named, with nothing written.
	for _, tc := range []struct {
		name, dropIn string
		env          []string
		want         string
	}{
		{"unknown key in a drop-in", "node:\n  latitude: 1\n  regoin: x\n", nil,
			"node.regoin (line 3 of " + filepath.Join(confd, "30-bad.yaml") + `): unknown key; did you mean "region"?`},
		{"variable naming no key", "", []string{"EDGENODE_NODE__REGOIN=x"},
			"EDGENODE_NODE__REGOIN: names no config key: node.regoin; did you mean EDGENODE_NODE__REGION?"},
		{"bad value in a variable", "", []string{"EDGENODE_HTTPS__LIMITS__MAX_BODY_BYTES=lots"},
			"https.limits.max_body_bytes (env EDGENODE_HTTPS__LIMITS__MAX_BODY_BYTES):"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := filepath.Join(confd, "30-bad.yaml")
			os.Remove(bad)
			if tc.dropIn != "" {
				write(bad, tc.dropIn)
			}
			dataDir := filepath.Join(t.TempDir(), "data")
			env := append(append(env[:len(env):len(env)], "EDGENODE_NODE__DATA_DIR="+dataDir), tc.env...)
			for _, args := range [][]string{{"run", "--config", path}, {"check-config", path}} {
				out, err := command(env, args...).CombinedOutput()
				if err == nil || !strings.Contains(string(out), tc.want) {
					t.Errorf("%s: %v, output lacks %q:\n%s", args[0], err, tc.want, out)
				}
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("data folder touched: %v", err)
			}
		})
	}
}

// command is the binary with args in the environment env.
func command(env []string, args ...string) *exec.Cmd {
	cmd := exec.Command(binPath, args...)
	cmd.Env = env
	return cmd
}
