package certs

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CertFile is a certificate file the node uses, and for what: "https" (a
// certificate of https.certificates, or the self-signed one), "mesh" (the
// node's peer-link certificate), "mesh_ca" (the cluster CA).
type CertFile struct {
	Use  string
	Path string
}

var descExpiry = prometheus.NewDesc("edgenode_tls_certificate_expiry_seconds",
	"Seconds until each certificate the node uses expires (negative: expired), by use (https, mesh, mesh_ca, acme) and subject; read at scrape time.",
	[]string{"use", "subject"}, nil)

// expiryCollector computes the expiry gauges at scrape time, from the
// files as they are now (the HTTPS part reloads them when they change, so
// the files are what is served) and from the ACME certificates served.
type expiryCollector struct {
	files   []CertFile
	managed func() []*x509.Certificate
	now     func() time.Time
}

// RegisterExpiry registers edgenode_tls_certificate_expiry_seconds on reg
// for files and for the certificates managed returns (nil: none). A file
// that cannot be read or parsed at scrape time is left out (the part that
// uses it logs why).
func RegisterExpiry(reg prometheus.Registerer, files []CertFile, managed func() []*x509.Certificate) error {
	if err := reg.Register(&expiryCollector{files: files, managed: managed, now: time.Now}); err != nil {
		return fmt.Errorf("certs: register metrics: %w", err)
	}
	return nil
}

func (c *expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descExpiry }

func (c *expiryCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	seen := map[[2]string]bool{}
	emit := func(use string, leaf *x509.Certificate) {
		subject := leaf.Subject.CommonName
		if subject == "" && len(leaf.DNSNames) > 0 {
			subject = leaf.DNSNames[0]
		}
		k := [2]string{use, subject}
		if seen[k] {
			return // one series per label set: two files with one subject report the first
		}
		seen[k] = true
		ch <- prometheus.MustNewConstMetric(descExpiry, prometheus.GaugeValue, leaf.NotAfter.Sub(now).Seconds(), use, subject)
	}
	for _, f := range c.files {
		if leaf, err := readLeaf(f.Path); err == nil {
			emit(f.Use, leaf)
		}
	}
	if c.managed != nil {
		for _, leaf := range c.managed() {
			emit("acme", leaf)
		}
	}
}

// readLeaf parses the first certificate of a PEM file.
func readLeaf(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%s: no certificate", path)
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// Leaves are the leaf certificates served now, one per certificate (a
// certificate for several names appears once).
func (m *Manager) Leaves() []*x509.Certificate {
	var out []*x509.Certificate
	seen := map[*x509.Certificate]bool{}
	for _, c := range m.table.Load().byName {
		if c.Leaf != nil && !seen[c.Leaf] {
			seen[c.Leaf] = true
			out = append(out, c.Leaf)
		}
	}
	return out
}
