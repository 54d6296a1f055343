package certs_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgenode/edgenode/internal/certs"
)

// TestCertificateExpiryGauge: the gauge reports, per file, the seconds left
// before the certificate's NotAfter (a certificate valid 30 days reports
// between 29 and 30 days), leaves out a file it cannot read, and registering
// twice on one registry is an error naming the package.
func TestCertificateExpiryGauge(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "edge.crt")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	files := []certs.CertFile{{Use: "https", Path: file}, {Use: "mesh", Path: filepath.Join(dir, "missing.crt")}}
	if err := certs.RegisterExpiry(reg, files, nil); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || len(mfs[0].Metric) != 1 {
		t.Fatalf("want one series (the missing file left out), got %v", mfs)
	}
	m := mfs[0].Metric[0]
	left := m.GetGauge().GetValue()
	if left <= 29*24*3600 || left > 30*24*3600 {
		t.Errorf("expiry %v s, want within the 30 days of validity", left)
	}
	if n := testutil.CollectAndCount(reg, "edgenode_tls_certificate_expiry_seconds"); n != 1 {
		t.Errorf("%d series", n)
	}
	labels := map[string]string{}
	for _, l := range m.Label {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["use"] != "https" || labels["subject"] != "edge.example" {
		t.Errorf("labels %v", labels)
	}
	if err := certs.RegisterExpiry(reg, files, nil); err == nil || !strings.HasPrefix(err.Error(), "certs: ") {
		t.Errorf("second registration: %v", err)
	}
}
