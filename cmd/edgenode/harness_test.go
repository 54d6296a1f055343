package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/edgenode/edgenode/internal/testkit"
)

// binPath is the edgenode binary built once for every test of this package:
// the tests run the real program as a subprocess, as operators do.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgenode-bin")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "edgenode")
	out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type nodeProc struct {
	t       testing.TB
	cmd     *exec.Cmd
	out     *testkit.LogBuffer // its stdout and stderr
	https   string             // host:port
	admin   string
	dns     string
	mongo   string
	dataDir string
	done    chan struct{}
	exitErr error
	cfgPath string   // the config file it was started with
	bin     string   // the binary to run; "" is binPath (this tree's)
	env     []string // added to the test's environment
}

// nodeConfig is the YAML every test node starts from: free ports, a data
// folder in the test's temp dir, parts the test does not need turned off.
func nodeConfig(t testing.TB, extra string) (string, *nodeProc) {
	p := &nodeProc{
		t:       t,
		https:   fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t, "127.0.0.1")),
		admin:   fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t, "127.0.0.1")),
		dns:     fmt.Sprintf("127.0.0.1:%d", testkit.FreeUDPTCPPort(t, "127.0.0.1")),
		mongo:   fmt.Sprintf("127.0.0.1:%d", testkit.FreePort(t, "127.0.0.1")),
		dataDir: filepath.Join(t.TempDir(), "data"),
	}
	cfg := fmt.Sprintf(`node:
  id: test-node
  data_dir: %s
  drain_timeout: 10s
log:
  level: debug
https:
  listen: %s
admin:
  listen: %s
dns:
  listen: %s
mongo:
  listen: %s
`, p.dataDir, p.https, p.admin, p.dns, p.mongo)
	return mergeYAML(t, cfg, extra), p
}

// mergeYAML deep-merges extra over base: tests state only what they change.
func mergeYAML(t testing.TB, base, extra string) string {
	t.Helper()
	var b, e map[string]any
	if err := yaml.Unmarshal([]byte(base), &b); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(extra), &e); err != nil {
		t.Fatal(err)
	}
	var merge func(dst, src map[string]any)
	merge = func(dst, src map[string]any) {
		for k, v := range src {
			if sm, ok := v.(map[string]any); ok {
				if dm, ok := dst[k].(map[string]any); ok {
					merge(dm, sm)
					continue
				}
			}
			dst[k] = v
		}
	}
	merge(b, e)
	out, err := yaml.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// startNode writes cfg and starts the binary; it waits until /readyz is true.
func startNode(t testing.TB, cfg string, p *nodeProc) *nodeProc {
	t.Helper()
	return startNodeWith(t, nil, cfg, p)
}

// startNodeWith is startNode with the binary run under a command prefix,
// e.g. {"ip", "netns", "exec", NS} for a node in a network namespace.
func startNodeWith(t testing.TB, prefix []string, cfg string, p *nodeProc) *nodeProc {
	t.Helper()
	spawnNode(t, prefix, nil, cfg, p)
	waitNodeReady(t, p)
	return p
}

// spawnNode writes cfg and starts the binary (under prefix, with the
// extra arguments of run) without waiting for anything.
func spawnNode(t testing.TB, prefix, args []string, cfg string, p *nodeProc) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "edgenode.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startProc(t, prefix, args, path, p)
}

// startProc starts the binary on the config file at path (p.env added to
// the environment), logging its output when the test fails.
func startProc(t testing.TB, prefix, args []string, path string, p *nodeProc) {
	t.Helper()
	p.cfgPath = path
	p.out = &testkit.LogBuffer{}
	bin := binPath
	if p.bin != "" {
		bin = p.bin
	}
	argv := append(append(append([]string{}, prefix...), bin, "run", "--config", path), args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	if len(p.env) > 0 {
		p.cmd.Env = append(os.Environ(), p.env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.done = make(chan struct{})
	go func() { p.exitErr = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("node output:\n%s", p.out.String())
		}
	})
}

// waitNodeReady waits until the node's /readyz is 200 (on failure
// spawnNode's cleanup logs the node's output).
func waitNodeReady(t testing.TB, p *nodeProc) {
	t.Helper()
	testkit.WaitFor(t, 60*time.Second, "the node to be ready", func() bool {
		select {
		case <-p.done:
			t.Fatalf("node exited during start-up: %v", p.exitErr)
		default:
		}
		resp, err := http.Get("http://" + p.admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func (p *nodeProc) signal(sig syscall.Signal) {
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *nodeProc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("node did not exit within %v:\n%s", timeout, p.out.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// httpsClient returns a client that trusts nothing but skips verification
// (the node's certificate is self-signed) and speaks h2 when h2 is true.
func httpsClient(h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func get(t testing.TB, c *http.Client, url string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// writeCert writes a self-signed certificate for names, ECDSA or RSA.
func writeCert(t testing.TB, certFile, keyFile, cn string, rsaKey bool, names ...string) *x509.Certificate {
	t.Helper()
	var pub, priv any
	if rsaKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		pub, priv = &k.PublicKey, k
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pub, priv = &k.PublicKey, k
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     names,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	// Write to temporary names and rename, as certificate tools do.
	if err := os.WriteFile(keyFile+".new", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile+".new", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(keyFile+".new", keyFile); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(certFile+".new", certFile); err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// peerCN does a fresh TLS handshake and returns the server certificate's CN.
func peerCN(t testing.TB, addr, sni string) string {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, ServerName: sni})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Subject.CommonName
}
