package pubsub

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

var acmeSecret = []byte("acme-secret-acme-secret-acme-0000")

// isolationOptions: "demo" (HS256, public thread-*), "other" (all public),
// "acme" (HS256 and Ed25519, all private).
func isolationOptions(t *testing.T) (Options, ed25519.PrivateKey) {
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	o := testOptions()
	o.Tenants = append(o.Tenants, Tenant{Name: "acme", Secret: acmeSecret, PublicKey: pub})
	return o, priv
}

// A connection of one tenant, trying every trick, receives nothing of
// another tenant; every refusal is an error frame and is counted.
func TestTenantIsolation(t *testing.T) {
	opts, acmeKey := isolationOptions(t)
	n := newNode(t, opts, nil)
	hour := time.Now().Add(time.Hour)

	// Victims: subscribers of other tenants, to be sure messages flow.
	acmeSub := n.mustDial()
	acmeSub.subscribe("acme/secret", token(t, "acme", "acme/secret", hour, acmeSecret), nil)
	otherSub := n.mustDial()
	otherSub.subscribe("other/x", "", nil)

	c := n.mustDial()
	c.subscribe("demo/thread-1", "", nil) // binds the connection to demo

	forgedHS := func(claims string, secret []byte) string {
		h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
		p := base64.RawURLEncoding.EncodeToString([]byte(claims))
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(h + "." + p))
		return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	exp := time.Now().Add(time.Hour).Unix()
	validAcme := token(t, "acme", "acme/secret", hour, acmeSecret)
	parts := strings.Split(validAcme, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"tenant":"acme","channel":"acme/*","exp":9999999999}`)) + "." + parts[2]
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." +
		base64.RawURLEncoding.EncodeToString([]byte(`{"tenant":"acme","channel":"acme/secret","exp":9999999999}`)) + "."
	// HS256 keyed with acme's public key: the classic algorithm confusion.
	confused := forgedHS(`{"tenant":"acme","channel":"acme/secret","exp":9999999999}`, opts.Tenants[2].PublicKey)
	edAcme, _ := SignEdDSA(TokenClaims{Tenant: "acme", Channel: "acme/secret", Exp: exp}, acmeKey)

	tricks := []struct {
		channel, token, code string
	}{
		// Another tenant's channel, with or without its valid token.
		{"other/x", "", codeTenantMismatch},
		{"acme/secret", validAcme, codeTenantMismatch},
		{"acme/secret", edAcme, codeTenantMismatch},
		// Names that are not one channel.
		{"demo/../other/x", "", codeBadChannel},
		{"demo/../acme/secret", "", codeBadChannel},
		{"demo//other/x", "", codeBadChannel},
		{"demo/other/x", "", codeBadChannel},
		{"demo/%2e%2e/other", "", codeBadChannel},
		{"demo/..", "", codeBadChannel},
		{"demo/.hidden", "", codeBadChannel},
		{"demo/*", "", codeBadChannel},
		{"demo/thread-*", "", codeBadChannel},
		{"*/x", "", codeBadChannel},
		{"DEMO/thread-1", "", codeBadChannel},
		{"Acme/secret", "", codeBadChannel},
		{"demo/thread-1 ", "", codeBadChannel},
		{"demo/thread-1\x00acme", "", codeBadChannel},
		{"dem\u043e/thread-1", "", codeBadChannel}, // Cyrillic o
		{"demo\\thread-1", "", codeBadChannel},
		{"acme", "", codeBadChannel},
		{"/acme/secret", "", codeBadChannel},
		{"nosuch/x", "", codeUnknownTenant},
		// demo's private threads with bad tokens.
		{"demo/private-1", "", codeTokenRequired},
		{"demo/private-1", validAcme, codeTokenInvalid}, // other tenant's key
		{"demo/private-1", forgedHS(`{"tenant":"demo","channel":"demo/private-1","exp":9999999999}`, acmeSecret), codeTokenInvalid}, // signed by acme
		{"demo/private-1", forgedHS(`{"tenant":"acme","channel":"acme/*","exp":9999999999}`, testSecret), codeTokenTenant},          // demo-signed, claims acme
		{"demo/private-1", forgedHS(`{"tenant":"demo","channel":"acme/*","exp":9999999999}`, testSecret), codeTokenTenant},          // scope in acme
		{"demo/private-1", token(t, "demo", "demo/private-2", hour, testSecret), codeTokenScope},
		{"demo/private-1", token(t, "demo", "demo/thread-*", hour, testSecret), codeTokenScope},
		{"demo/private-1", token(t, "demo", "demo/private-1", time.Now().Add(-time.Second), testSecret), codeTokenExpired},
		{"demo/private-1", forgedHS(`{"tenant":"demo","channel":"demo/private-1"}`, testSecret), codeTokenExpired}, // no exp
		{"demo/private-1", tampered, codeTokenInvalid},
		{"demo/private-1", none, codeTokenInvalid},
		{"demo/private-1", confused, codeTokenInvalid},
		{"demo/private-1", "garbage", codeTokenInvalid},
		{"demo/private-1", strings.Repeat("a.", 2000), codeTokenInvalid},
	}
	for _, tr := range tricks {
		before := testutil.ToFloat64(n.ps.met.refusals.WithLabelValues(tr.code))
		m := map[string]any{"type": "subscribe", "channel": tr.channel, "id": "t"}
		if tr.token != "" {
			m["token"] = tr.token
		}
		c.send(m)
		f := c.mustRead()
		if f.Type != typeError || f.Code != tr.code {
			t.Errorf("subscribe %q with token %.20q: got %+v, want error %s", tr.channel, tr.token, f, tr.code)
			continue
		}
		if after := testutil.ToFloat64(n.ps.met.refusals.WithLabelValues(tr.code)); after != before+1 {
			t.Errorf("refusal %s counted %v -> %v", tr.code, before, after)
		}
	}

	// A valid demo token still works: the connection is usable.
	c.subscribe("demo/private-1", token(t, "demo", "demo/private-*", hour, testSecret), nil)
	c.subscribe("demo/private-9", token(t, "demo", "demo/*", hour, testSecret), nil)

	// Publish everywhere; the demo connection sees only demo.
	for _, ch := range []string{"acme/secret", "other/x", "demo/private-1"} {
		n.publish(ch, ch)
	}
	acmeSub.expect(typeMessage)
	otherSub.expect(typeMessage)
	if f := c.expect(typeMessage); f.Channel != "demo/private-1" {
		t.Fatalf("got %+v", f)
	}
	c.sync() // nothing else arrived before the pong

	// A connection bound at the handshake (?tenant=acme) cannot subscribe
	// to demo, public or not.
	ac, _, err := n.dial("tenant=acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	ac.send(`{"type":"subscribe","channel":"demo/thread-1"}`)
	ac.expect(typeError, codeTenantMismatch)
	ac.subscribe("acme/secret", edAcme, nil)
	n.publish("demo/thread-1", 1)
	n.publish("acme/secret", 2)
	if f := ac.expect(typeMessage); f.Channel != "acme/secret" {
		t.Fatalf("got %+v", f)
	}
	if _, resp, err := n.dial("tenant=nosuch", nil); err == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown tenant at handshake: %v %v", err, resp)
	}

	// SSE: a stream naming two tenants gets the first and an error for the
	// second; only the first's messages arrive.
	s, _ := n.sse("channel=demo/thread-1&channel=other/x&channel=acme/secret&token="+validAcme, nil)
	f1, _ := s.expect(typeError)
	f2, _ := s.expect(typeError)
	if f1.Code != codeTenantMismatch || f2.Code != codeTenantMismatch {
		t.Fatalf("sse refusals %+v %+v", f1, f2)
	}
	s.expect(typeSubscribed)
	n.publish("other/x", "x")
	n.publish("acme/secret", "x")
	n.publish("demo/thread-1", "mine")
	if f, _ := s.expect(typeMessage); f.Channel != "demo/thread-1" {
		t.Fatalf("sse got %+v", f)
	}
	// Every channel refused: 403, so EventSource stops retrying.
	if _, resp := n.sse("channel=acme/secret", nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("sse all refused: %d", resp.StatusCode)
	}
}

func TestOriginAllowList(t *testing.T) {
	opts := testOptions()
	opts.Tenants[0].Origins = []string{"https://example.com", "https://*.example.org"}
	opts.Tenants[1].Origins = []string{"https://other.test"}
	n := newNode(t, opts, nil)
	hdr := func(o string) http.Header { return http.Header{"Origin": {o}} }

	for _, o := range []string{"https://evil.com", "https://example.com.evil.com", "http://example.com", "https://example.org", "null"} {
		if _, resp, err := n.dial("", hdr(o)); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("origin %s: %v", o, err)
		}
	}
	// Allowed at the handshake by some tenant, refused at the subscription
	// by another.
	c, _, err := n.dial("", hdr("https://a.example.org"))
	if err != nil {
		t.Fatal(err)
	}
	c.send(`{"type":"subscribe","channel":"other/x"}`)
	c.expect(typeError, codeOrigin)
	c.subscribe("demo/thread-1", "", nil)
	// Bound to a tenant at the handshake: its list alone counts.
	if _, resp, err := n.dial("tenant=other", hdr("https://example.com")); err == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("tenant-bound origin: %v", err)
	}
	// No Origin: not a browser, allowed.
	n.mustDial().subscribe("other/x", "", nil)
	if got := testutil.ToFloat64(n.ps.met.refusals.WithLabelValues(codeOrigin)); got != 7 {
		t.Fatalf("origin refusals counted %v, want 7", got)
	}
}
