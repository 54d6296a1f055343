package transport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgenode/edgenode/internal/atomicfile"
)

// CertSource is one certificate chain and key. The key is PEM read from
// KeyFile, or KeyPEM when the config gave it as a secret.
type CertSource struct {
	CertFile string
	KeyFile  string
	KeyPEM   func() ([]byte, error) // used when KeyFile is empty
}

// certSet is an immutable set of loaded certificates, swapped whole on reload
// so a handshake never sees half a reload.
type certSet struct {
	certs []*tls.Certificate
	// stamps are the files' size and mtime at load, to notice changes.
	stamps []string
}

// CertStore picks a certificate for each TLS handshake and reloads the files
// when they change. It is safe for concurrent use.
type CertStore struct {
	sources []CertSource
	log     *slog.Logger
	cur     atomic.Pointer[certSet]
	mu      sync.Mutex // serializes reloads; never held during a handshake
	onLoad  func(ok bool)
}

// NewCertStore loads every source once; an error names the file.
func NewCertStore(sources []CertSource, log *slog.Logger) (*CertStore, error) {
	if len(sources) == 0 {
		return nil, errors.New("no certificates")
	}
	s := &CertStore{sources: sources, log: log}
	set, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur.Store(set)
	return s, nil
}

func stamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprintf("%d/%d", fi.Size(), fi.ModTime().UnixNano())
}

func (s *CertStore) load() (*certSet, error) {
	set := &certSet{}
	for _, src := range s.sources {
		certPEM, err := os.ReadFile(src.CertFile)
		if err != nil {
			return nil, fmt.Errorf("read certificate: %w", err)
		}
		var keyPEM []byte
		if src.KeyFile != "" {
			keyPEM, err = os.ReadFile(src.KeyFile)
			set.stamps = append(set.stamps, stamp(src.KeyFile))
		} else {
			keyPEM, err = src.KeyPEM()
		}
		if err != nil {
			return nil, fmt.Errorf("read key for %s: %w", src.CertFile, err)
		}
		set.stamps = append(set.stamps, stamp(src.CertFile))
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", src.CertFile, err)
		}
		if c.Leaf == nil {
			if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
				return nil, fmt.Errorf("certificate %s: %w", src.CertFile, err)
			}
		}
		set.certs = append(set.certs, &c)
	}
	return set, nil
}

// Reload reads every file again and swaps the set in when all of them load.
// On error the old set stays in use, so a half-written file never takes the
// listener down.
func (s *CertStore) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	set, err := s.load()
	if s.onLoad != nil {
		s.onLoad(err == nil)
	}
	if err != nil {
		return err
	}
	s.cur.Store(set)
	for _, c := range set.certs {
		s.log.Info("certificate loaded", "subject", c.Leaf.Subject.CommonName, "names", c.Leaf.DNSNames,
			"not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339), "sha256", Fingerprint(c.Leaf.Raw))
	}
	return nil
}

// changed reports whether any file differs from what was loaded.
func (s *CertStore) changed() bool {
	set := s.cur.Load()
	var now []string
	for _, src := range s.sources {
		if src.KeyFile != "" {
			now = append(now, stamp(src.KeyFile))
		}
		now = append(now, stamp(src.CertFile))
	}
	return strings.Join(now, ",") != strings.Join(set.stamps, ",")
}

// Watch polls the files every interval until stop is closed and reloads when
// one changed. Polling (rather than inotify) also sees the renames and
// symlink swaps that certificate tools use.
func (s *CertStore) Watch(interval time.Duration, stop <-chan struct{}) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if s.changed() {
				if err := s.Reload(); err != nil {
					s.log.Warn("certificate files changed but do not load; keeping the old ones", "err", err)
				}
			}
		}
	}
}

// GetCertificate chooses by SNI, then by what the client supports (ECDSA or
// RSA), falling back to the first certificate for clients without SNI.
func (s *CertStore) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	set := s.cur.Load()
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	var nameMatch *tls.Certificate
	if name != "" {
		for _, c := range set.certs {
			if c.Leaf.VerifyHostname(name) != nil {
				continue
			}
			if hello.SupportsCertificate(c) == nil {
				return c, nil
			}
			if nameMatch == nil {
				nameMatch = c
			}
		}
	}
	if nameMatch != nil {
		return nameMatch, nil
	}
	for _, c := range set.certs {
		if hello.SupportsCertificate(c) == nil {
			return c, nil
		}
	}
	return set.certs[0], nil
}

// Fingerprint is the SHA-256 of a DER certificate, as browsers show it.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// EnsureSelfSigned returns the paths of a self-signed ECDSA certificate in
// dir, creating it (and dir) on first use. It covers localhost, 127.0.0.1, ::1
// and the extra names given. Created once so browsers and curl --pinnedpubkey
// keep trusting the same certificate across restarts.
func EnsureSelfSigned(dir string, names []string, log *slog.Logger) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, "selfsigned.crt"), filepath.Join(dir, "selfsigned.key")
	if _, err1 := os.Stat(certFile); err1 == nil {
		if _, err2 := os.Stat(keyFile); err2 == nil {
			return certFile, keyFile, logFingerprint(certFile, log, false)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("create certificate folder: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "edgenode self-signed", Organization: []string{"edgenode"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(2, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if n != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	if err := atomicfile.Write(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	if err := atomicfile.Write(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", err
	}
	return certFile, keyFile, logFingerprint(certFile, log, true)
}

func logFingerprint(certFile string, log *slog.Logger, created bool) error {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return fmt.Errorf("%s: no PEM certificate", certFile)
	}
	msg := "using self-signed certificate"
	if created {
		msg = "created self-signed certificate"
	}
	log.Info(msg, "file", certFile, "sha256", Fingerprint(blk.Bytes))
	return nil
}
