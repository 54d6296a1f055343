package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// An empty or blank admin secret must stop the node with the key named: on
// b9c4b6e an empty publish.secret gave an empty bearer token, and an empty
// token left the /v1/ publish and purge routes open to anyone.
func TestEmptyAdminSecretStopsTheNode(t *testing.T) {
	cases := []struct {
		name   string
		prep   func(t *testing.T, dataDir string) string // returns extra YAML
		wantIn []string
	}{
		{"empty publish.secret", func(t *testing.T, dataDir string) string {
			writeFile(t, filepath.Join(dataDir, "publish.secret"), "")
			return ""
		}, []string{"admin.token", "publish.secret is empty"}},
		{"blank publish.secret", func(t *testing.T, dataDir string) string {
			writeFile(t, filepath.Join(dataDir, "publish.secret"), " \n\n")
			return ""
		}, []string{"admin.token", "publish.secret is empty"}},
		{"empty admin.token file", func(t *testing.T, dataDir string) string {
			f := filepath.Join(t.TempDir(), "admin.token")
			writeFile(t, f, "\n")
			return "admin:\n  token: {file: " + f + "}\n"
		}, []string{"admin.token", "empty"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, p := nodeConfig(t, "")
			if err := os.MkdirAll(p.dataDir, 0o700); err != nil {
				t.Fatal(err)
			}
			cfg = mergeYAML(t, cfg, tc.prep(t, p.dataDir))
			path := filepath.Join(t.TempDir(), "edgenode.yaml")
			writeFile(t, path, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, binPath, "run", "--config", path).CombinedOutput()
			var ee *exec.ExitError
			if ctx.Err() != nil || !errors.As(err, &ee) || ee.ExitCode() <= 0 {
				t.Fatalf("node did not stop at start (err %v, ctx %v):\n%s", err, ctx.Err(), out)
			}
			for _, w := range tc.wantIn {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// Profiles expose memory and cost CPU: on b9c4b6e /debug/pprof/ answered
// anyone who reached the admin listener.
func TestPprofNeedsTheAdminToken(t *testing.T) {
	cfg, p := nodeConfig(t, "")
	startNode(t, cfg, p)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap", "/debug/pprof/symbol"} {
		resp, _ := get(t, http.DefaultClient, "http://"+p.admin+path)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s without the token: %d, want 401", path, resp.StatusCode)
		}
	}
	tok, err := os.ReadFile(filepath.Join(p.dataDir, "publish.secret"))
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(filepath.Join(p.dataDir, "publish.secret"))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("publish.secret mode %v, want 0600", st.Mode().Perm())
	}
	req, _ := http.NewRequest("GET", "http://"+p.admin+"/debug/pprof/", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("pprof with the token: %d", resp.StatusCode)
	}
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A listener that anyone off the machine can reach without authenticating is
// named at start (b9c4b6e said nothing). The test binds to every interface
// but sends traffic to loopback only.
func TestUnprotectedListenersAreNamedAtStart(t *testing.T) {
	cfg, p := nodeConfig(t, "")
	_, port, _ := strings.Cut(p.admin, ":")
	_, mport, _ := strings.Cut(p.mongo, ":")
	cfg = mergeYAML(t, cfg, "admin:\n  listen: 0.0.0.0:"+port+"\nmongo:\n  listen: 0.0.0.0:"+mport+"\n")
	p.admin = "127.0.0.1:" + port
	startNode(t, cfg, p)
	out := p.out.String()
	for _, key := range []string{"admin.listen", "mongo.listen"} {
		if !strings.Contains(out, "listener reachable beyond this machine without authentication") || !strings.Contains(out, "key="+key) {
			t.Errorf("no warning naming %s:\n%s", key, out)
		}
	}
}
