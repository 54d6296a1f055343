package mongoproxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/testkit"
)

// TestTLSUpstream: a FerretDB process that listens with TLS only (a
// throwaway certificate for 127.0.0.1), named by a URI with tls=true and
// tlsCAFile: the proxy's own client and the client connections it dials
// both verify it, and captured and forwarded commands work through it.
func TestTLSUpstream(t *testing.T) {
	bin, err := ferretdbPath()
	if err != nil {
		t.Skipf("ferretdb: %v", err)
	}
	dir := t.TempDir()
	caFile, certFile, keyFile := writeTestCert(t, dir)
	port := testkit.FreePort(t, "127.0.0.1")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--handler=sqlite", "--sqlite-url=file:"+data+"/",
		"--listen-addr=", "--listen-tls="+addr, "--listen-tls-cert-file="+certFile, "--listen-tls-key-file="+keyFile,
		"--debug-addr=-", "--state-dir="+data, "--telemetry=disable", "--log-level=error")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	uri := "mongodb://" + addr + "/?tls=true&tlsCAFile=" + caFile
	testkit.WaitFor(t, 60*time.Second, "FerretDB to listen with TLS", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})

	tp := newProxyAt(t, uri, "n1")
	db := freshDB("tls")
	coll := tp.client.Database(db).Collection("c")
	if _, err := coll.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}, {Key: "n", Value: 1}}); err != nil {
		t.Fatalf("captured insert over a TLS upstream: %v (ferretdb: %s)", err, logs.String())
	}
	var got bson.M
	if err := coll.FindOne(testCtx, bson.D{{Key: "_id", Value: 1}}).Decode(&got); err != nil {
		t.Fatalf("forwarded find over a TLS upstream: %v", err)
	}
	if n, err := tp.direct.Database(db).Collection("c").CountDocuments(testCtx, bson.D{}); err != nil || n != 1 {
		t.Fatalf("the TLS upstream holds %d documents (%v), want 1", n, err)
	}
}

// TestUpstreamURIs: New takes any MongoDB URI the driver takes (several
// hosts, replicaSet, TLS options, authentication) and refuses malformed
// ones with the driver's reason. A well-formed mongodb+srv:// URI is
// resolved by the driver's URI parser (a DNS query, which tests may not
// send: traffic stays on loopback), so only the SRV URIs refused before
// any lookup are tested here.
func TestUpstreamURIs(t *testing.T) {
	for _, uri := range []string{
		"mongodb://a.example:27017,b.example:27017/?replicaSet=pop1",
		"mongodb://u:p@a.example,b.example/?replicaSet=pop1&authSource=admin&authMechanism=SCRAM-SHA-256&tls=true&tlsInsecure=true",
	} {
		if _, err := New(Options{Upstream: uri, NodeID: "n", DataDir: t.TempDir()}, testLogger(), nil); err != nil {
			t.Errorf("%s: %v", uri, err)
		}
	}
	for uri, want := range map[string]string{
		"mongodb+srv://pop1.example.invalid:27017/": "port",
		"mongodb+srv://a.example,b.example/":        "",
		"mongodb://a.example/?tls=true&ssl=false":   "",
		"mongodb://a.example/?loadBalanced=true":    "loadBalanced",
		"http://a.example/":                         "scheme",
	} {
		_, err := New(Options{Upstream: uri, NodeID: "n", DataDir: t.TempDir()}, testLogger(), nil)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "lookup") {
			t.Errorf("%s: %v, want an error naming %q", uri, err, want)
		}
	}
	if _, err := New(Options{Upstream: "mongodb://a/", NodeID: "n", DataDir: t.TempDir(), Advertise: "nohost"}, testLogger(), nil); err == nil {
		t.Error("Advertise without a port accepted")
	}
}

// writeTestCert writes a throwaway CA and a certificate for 127.0.0.1
// signed by it.
func writeTestCert(t testing.TB, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, b := range map[string][]byte{
		caFile:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}
