package certs_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ocsp"

	"github.com/edgenode/edgenode/internal/certs"
	"github.com/edgenode/edgenode/internal/testkit"
	"github.com/edgenode/edgenode/internal/transport"
)

// TestFollowerStaplesLeadersOCSP: a certificate with an OCSP responder and
// the leader's stored OCSP response (where certmagic keeps it) is served
// stapled by a follower, which never asks the responder itself; a newer
// response replaces it without a restart.
func TestFollowerStaplesLeadersOCSP(t *testing.T) {
	ctx := context.Background()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(42), DNSNames: []string{"stapled.example.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		OCSPServer: []string{"http://127.0.0.1:1/ocsp"}, // never contacted
		KeyUsage:   x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	leaf, _ := x509.ParseCertificate(leafDER)
	chainPEM := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	kd, _ := x509.MarshalPKCS8PrivateKey(leafKey)

	kv := certs.NewMemKV()
	const caURL = "https://ca.example.test/directory"
	ik := (&certmagic.ACMEIssuer{CA: caURL}).IssuerKey()
	must(t, kv.Put(ctx, certmagic.StorageKeys.SiteCert(ik, "stapled.example.test"), chainPEM))
	must(t, kv.Put(ctx, certmagic.StorageKeys.SitePrivateKey(ik, "stapled.example.test"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})))
	h := fnv.New32a()
	h.Write(chainPEM)
	stapleKey := fmt.Sprintf("ocsp/stapled.example.test-%x", h.Sum32())
	makeResp := func(thisUpdate time.Time) []byte {
		b, err := ocsp.CreateResponse(ca, ca, ocsp.Response{Status: ocsp.Good, SerialNumber: leaf.SerialNumber,
			ThisUpdate: thisUpdate, NextUpdate: thisUpdate.Add(12 * time.Hour)}, caKey)
		must(t, err)
		return b
	}
	first := makeResp(time.Now().Add(-time.Minute))
	must(t, kv.Put(ctx, stapleKey, first))

	mgr, err := certs.New(certs.Options{CA: caURL, NodeID: "follower"}, kv, testLog(), prometheus.NewRegistry())
	must(t, err)
	must(t, mgr.Start(ctx))
	defer mgr.Stop()
	ln := listenTCP(t)
	dir := t.TempDir()
	cf, kf, _ := transport.EnsureSelfSigned(dir, nil, testLog())
	store, _ := transport.NewCertStore([]transport.CertSource{{CertFile: cf, KeyFile: kf}}, testLog())
	srv, err := transport.New(transport.Options{Listener: ln, Certs: store, ACME: mgr, App: http.NotFoundHandler(),
		Limits: transport.Limits{MaxHeaderBytes: 8 << 10, ReadHeaderTimeout: 10 * time.Second}}, testLog(), prometheus.NewRegistry())
	must(t, err)
	go srv.Serve()
	defer srv.Shutdown(ctx)

	staple := func() []byte {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "stapled.example.test", InsecureSkipVerify: true})
		must(t, err)
		defer c.Close()
		return c.ConnectionState().OCSPResponse
	}
	if got := staple(); !bytes.Equal(got, first) {
		t.Fatalf("staple: %d bytes, want the stored response (%d bytes)", len(got), len(first))
	}
	second := makeResp(time.Now())
	must(t, kv.Put(ctx, stapleKey, second))
	testkit.WaitFor(t, 10*time.Second, "the new staple", func() bool { return bytes.Equal(staple(), second) })
}
