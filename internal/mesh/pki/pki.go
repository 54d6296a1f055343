// Package pki makes the cluster certificate authority and the node
// certificates that authenticate peer links.
//
// Every node gets a certificate signed by the cluster CA that names it twice:
// in a URI SAN edgenode://node/<id> (the identity the mesh checks against the
// membership list) and, when the id is a valid DNS label, in a DNS SAN (so
// ordinary tools can show it). Keys are ECDSA P-256. Certificates carry both
// the server and the client extended key usage because every link is mutually
// authenticated and either side may dial. A certificate's IP address SANs are the public
// addresses the node may advertise: gossip metadata is writable by anyone
// holding the gossip key, so the mesh marks a peer's addresses verified (and
// DNS hands them out) only when the certificate on its link lists them.
//
// Files are created, never replaced: a second `ca init` on a live cluster
// would silently split it into two trust domains, so the functions refuse to
// overwrite and the operator has to remove files on purpose.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside a CA directory.
const (
	CACertName = "ca.crt"
	CAKeyName  = "ca.key"
)

// URIScheme and URIHost form the URI SAN that carries a node id:
// edgenode://node/<id>.
const (
	URIScheme = "edgenode"
	URIHost   = "node"
)

// Validity periods. The CA outlives many node certificates so nodes can be
// re-issued without touching the trust anchor on every node.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	NodeValidity = 3 * 365 * 24 * time.Hour
)

// MaxNodeIDLen bounds node ids so that they fit in gossip metadata, DNS
// labels and metric labels.
const MaxNodeIDLen = 63

// ValidNodeID reports whether id may name a node: 1 to 63 characters of
// ASCII letters, digits, '-', '_' and '.', not starting with '-' or '.'.
func ValidNodeID(id string) error {
	if id == "" {
		return errors.New("node id is empty")
	}
	if len(id) > MaxNodeIDLen {
		return fmt.Errorf("node id %q is longer than %d characters", id, MaxNodeIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		case (c == '-' || c == '.') && i > 0:
		default:
			return fmt.Errorf("node id %q: character %q at %d not allowed (letters, digits, '-', '_', '.'; not first '-' or '.')", id, c, i)
		}
	}
	return nil
}

// NodeURI returns the URI SAN that names node id.
func NodeURI(id string) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: URIHost, Path: "/" + id}
}

// NodeIDFromCert returns the node id named by cert's URI SAN. The certificate
// must carry exactly one edgenode://node/<id> URI with a valid id.
func NodeIDFromCert(cert *x509.Certificate) (string, error) {
	var id string
	found := 0
	for _, u := range cert.URIs {
		if u.Scheme != URIScheme || u.Host != URIHost {
			continue
		}
		found++
		id = strings.TrimPrefix(u.Path, "/")
		if u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Opaque != "" {
			return "", fmt.Errorf("certificate %q: malformed node URI %q", cert.Subject.CommonName, u.String())
		}
	}
	switch found {
	case 0:
		return "", fmt.Errorf("certificate %q has no %s://%s/<id> URI SAN", cert.Subject.CommonName, URIScheme, URIHost)
	case 1:
	default:
		return "", fmt.Errorf("certificate %q has %d node URIs, want one", cert.Subject.CommonName, found)
	}
	if err := ValidNodeID(id); err != nil {
		return "", fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, err)
	}
	return id, nil
}

// InitCA creates a new cluster CA in dir: ca.crt (0644) and ca.key (0600).
// dir is created (0700) if missing. It refuses to overwrite an existing CA.
func InitCA(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	certPath := filepath.Join(dir, CACertName)
	keyPath := filepath.Join(dir, CAKeyName)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("ca init: %s already exists; refusing to overwrite (remove it on purpose to make a new CA)", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("ca init: %w", err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("ca init: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	skid, err := subjectKeyID(key.Public())
	if err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "edgenode cluster CA", Organization: []string{"edgenode"}},
		NotBefore:             now.Add(-time.Hour), // tolerate small clock skew between nodes
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true, // the CA signs node certificates only, never other CAs
		SubjectKeyId:          skid,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("ca init: create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("ca init: marshal key: %w", err)
	}
	// Key first: if writing the certificate fails we remove the key, so a
	// half-made CA never looks complete.
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("ca init: %w", err)
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		_ = os.Remove(keyPath)
		return fmt.Errorf("ca init: %w", err)
	}
	return nil
}

// IssueNode signs a certificate for nodeID with the CA in caDir and writes
// <nodeID>.crt (0644) and <nodeID>.key (0600) into outDir (created 0700 if
// missing). hosts become extra SANs: IP addresses as IP SANs, anything else as
// DNS SANs. The IP SANs matter: the mesh lets DNS name a peer only at public
// addresses its certificate lists. It refuses to overwrite existing files and
// returns their paths.
func IssueNode(caDir, nodeID, outDir string, hosts []string) (certPath, keyPath string, err error) {
	if err := ValidNodeID(nodeID); err != nil {
		return "", "", fmt.Errorf("ca issue: %w", err)
	}
	caCert, caKey, err := LoadCA(caDir)
	if err != nil {
		return "", "", fmt.Errorf("ca issue: %w", err)
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return "", "", fmt.Errorf("ca issue: %w", err)
	}
	certPath = filepath.Join(outDir, nodeID+".crt")
	keyPath = filepath.Join(outDir, nodeID+".key")
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("ca issue: %s already exists; refusing to overwrite", p)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return "", "", fmt.Errorf("ca issue: %w", err)
		}
	}
	certPEM, keyPEM, err := issue(caCert, caKey, nodeID, hosts)
	if err != nil {
		return "", "", fmt.Errorf("ca issue: %w", err)
	}
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("ca issue: %w", err)
	}
	if err := writeNew(certPath, certPEM, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return "", "", fmt.Errorf("ca issue: %w", err)
	}
	return certPath, keyPath, nil
}

// IssueNodePEM is IssueNode without files: it returns PEM-encoded certificate
// and PKCS#8 key. Tests and tools that keep material in memory use it.
func IssueNodePEM(caDir, nodeID string, hosts []string) (certPEM, keyPEM []byte, err error) {
	if err := ValidNodeID(nodeID); err != nil {
		return nil, nil, fmt.Errorf("ca issue: %w", err)
	}
	caCert, caKey, err := LoadCA(caDir)
	if err != nil {
		return nil, nil, fmt.Errorf("ca issue: %w", err)
	}
	return issue(caCert, caKey, nodeID, hosts)
}

func issue(caCert *x509.Certificate, caKey crypto.Signer, nodeID string, hosts []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: nodeID, Organization: []string{"edgenode"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(NodeValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{NodeURI(nodeID)},
	}
	if isDNSName(nodeID) {
		tmpl.DNSNames = append(tmpl.DNSNames, nodeID)
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if isDNSName(h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		} else {
			return nil, nil, fmt.Errorf("host %q is neither an IP address nor a DNS name", h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// LoadCA reads the CA certificate and key from dir.
func LoadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertName))
	if err != nil {
		return nil, nil, fmt.Errorf("load CA: %w", err)
	}
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA %s: %w", filepath.Join(dir, CACertName), err)
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("load CA: %s is not a CA certificate", filepath.Join(dir, CACertName))
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyName))
	if err != nil {
		return nil, nil, fmt.Errorf("load CA: %w", err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, nil, fmt.Errorf("load CA: %s: no PEM block", filepath.Join(dir, CAKeyName))
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("load CA key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("load CA key: not a signing key")
	}
	if !publicKeysEqual(signer.Public(), cert.PublicKey) {
		return nil, nil, errors.New("load CA: key does not match certificate")
	}
	return cert, signer, nil
}

// ParseCertificates decodes every CERTIFICATE block in pemBytes.
func ParseCertificates(pemBytes []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, pemBytes = pem.Decode(pemBytes)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate found")
	}
	return out, nil
}

// LoadCAPool reads a PEM file of CA certificates into a pool.
func LoadCAPool(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load CA pool: %w", err)
	}
	certs, err := ParseCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("load CA pool %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// VerifyNode checks that chain[0] is a node certificate signed by a CA in
// roots (intermediates from the rest of chain) valid at now, and returns its
// node id.
func VerifyNode(chain []*x509.Certificate, roots *x509.CertPool, now time.Time) (string, error) {
	if len(chain) == 0 {
		return "", errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		// Either side of a link may be the TLS client; node certificates
		// carry both usages, so require them both.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return "", fmt.Errorf("certificate %q not from the cluster CA: %w", chain[0].Subject.CommonName, err)
	}
	return NodeIDFromCert(chain[0])
}

func randomSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	return s, nil
}

func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("subject key id: %w", err)
	}
	// RFC 7093 method 1: the leftmost 160 bits of the SHA-256 of the key.
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	ea, ok := a.(equaler)
	return ok && ea.Equal(b)
}

func isDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// writeNew creates path with mode, failing if it exists. A partly written
// file is removed so it never passes for a good one.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to overwrite", path)
		}
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("close %s: %w", path, err)
	}
	// The umask may have narrowed the mode; never widened, but make it exact.
	if err := os.Chmod(path, mode); err != nil {
		os.Remove(path)
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}
