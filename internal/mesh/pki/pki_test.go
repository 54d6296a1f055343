package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestInitCAAndIssue(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if err := InitCA(caDir); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{CACertName: 0o644, CAKeyName: 0o600} {
		st, err := os.Stat(filepath.Join(caDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), want)
		}
	}
	if err := InitCA(caDir); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second InitCA: %v, want refusal", err)
	}

	out := filepath.Join(dir, "nodes")
	certPath, keyPath, err := IssueNode(caDir, "node-1", out, []string{"127.0.0.1", "node1.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(keyPath); st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", st.Mode().Perm())
	}
	if _, _, err := IssueNode(caDir, "node-1", out, nil); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("second IssueNode: %v, want refusal", err)
	}

	// The pair loads as a TLS certificate and verifies against the CA.
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || leaf.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("leaf key is not ECDSA P-256: %T", leaf.PublicKey)
	}
	pool, err := LoadCAPool(filepath.Join(caDir, CACertName))
	if err != nil {
		t.Fatal(err)
	}
	id, err := VerifyNode([]*x509.Certificate{leaf}, pool, time.Now())
	if err != nil || id != "node-1" {
		t.Fatalf("VerifyNode = %q, %v", id, err)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal([]byte{127, 0, 0, 1}) {
		t.Errorf("IP SANs %v", leaf.IPAddresses)
	}
	if strings.Join(leaf.DNSNames, ",") != "node-1,node1.example.com" {
		t.Errorf("DNS SANs %v", leaf.DNSNames)
	}

	// A certificate from another CA does not verify.
	other := filepath.Join(dir, "other")
	if err := InitCA(other); err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := IssueNodePEM(other, "node-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := ParseCertificates(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyNode(foreign, pool, time.Now()); err == nil {
		t.Fatal("certificate from another CA verified")
	}
	// Expired: verification at a time past NotAfter fails.
	if _, err := VerifyNode([]*x509.Certificate{leaf}, pool, time.Now().Add(NodeValidity+time.Hour)); err == nil {
		t.Fatal("expired certificate verified")
	}
}

func TestIssueRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := IssueNode(dir, "n1", dir, nil); err == nil {
		t.Fatal("issued without a CA")
	}
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "-x", ".x", "a/b", "a b", strings.Repeat("a", 64), "ä"} {
		if _, _, err := IssueNode(dir, id, t.TempDir(), nil); err == nil {
			t.Errorf("IssueNode(%q) succeeded", id)
		}
	}
	if _, _, err := IssueNode(dir, "ok", t.TempDir(), []string{"bad host!"}); err == nil {
		t.Error("bad host accepted")
	}
	// Node ids that are not DNS names still work; they just get no DNS SAN.
	certPEM, _, err := IssueNodePEM(dir, "node_1", nil)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := ParseCertificates(certPEM)
	if id, err := NodeIDFromCert(c[0]); err != nil || id != "node_1" || len(c[0].DNSNames) != 0 {
		t.Fatalf("id %q err %v dns %v", id, err, c[0].DNSNames)
	}
}

func TestLoadCARejectsMismatchedKey(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if err := InitCA(a); err != nil {
		t.Fatal(err)
	}
	if err := InitCA(b); err != nil {
		t.Fatal(err)
	}
	keyB, _ := os.ReadFile(filepath.Join(b, CAKeyName))
	if err := os.Remove(filepath.Join(a, CAKeyName)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a, CAKeyName), keyB, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadCA(a); err == nil {
		t.Fatal("mismatched CA key accepted")
	}
}

func TestNodeIDFromCert(t *testing.T) {
	mk := func(uris ...string) *x509.Certificate {
		c := &x509.Certificate{}
		for _, u := range uris {
			pu, err := parseURL(u)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, pu)
		}
		return c
	}
	cases := []struct {
		uris []string
		id   string
		ok   bool
	}{
		{[]string{"edgenode://node/a1"}, "a1", true},
		{[]string{"spiffe://x/y", "edgenode://node/a1"}, "a1", true},
		{nil, "", false},
		{[]string{"edgenode://node/a1", "edgenode://node/a2"}, "", false},
		{[]string{"edgenode://node/"}, "", false},
		{[]string{"edgenode://node/a/b"}, "", false},
		{[]string{"edgenode://node/a1?x=1"}, "", false},
		{[]string{"edgenode://other/a1"}, "", false},
	}
	for _, c := range cases {
		id, err := NodeIDFromCert(mk(c.uris...))
		if (err == nil) != c.ok || id != c.id {
			t.Errorf("%v: id %q err %v", c.uris, id, err)
		}
	}
}

func TestParseCertificatesSkipsOtherBlocks(t *testing.T) {
	dir := t.TempDir()
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := IssueNodePEM(dir, "n", nil)
	if err != nil {
		t.Fatal(err)
	}
	both := append(append([]byte{}, keyPEM...), certPEM...)
	cs, err := ParseCertificates(both)
	if err != nil || len(cs) != 1 {
		t.Fatalf("%d certs, %v", len(cs), err)
	}
	if _, err := ParseCertificates(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})); err == nil {
		t.Fatal("junk certificate parsed")
	}
	if _, err := ParseCertificates(nil); err == nil {
		t.Fatal("empty input parsed")
	}
}

func parseURL(s string) (*url.URL, error) { return url.Parse(s) }
