package pubsub

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
)

// TokenClaims are what an app server signs to let a browser subscribe to a
// private channel. The token is a JWT (compact form) with alg HS256 (the
// tenant's Secret) or EdDSA (Ed25519, the tenant's PublicKey verifies), so
// any JWT library can make one.
type TokenClaims struct {
	Tenant string `json:"tenant"`
	// Channel is a channel name ("demo/thread-1") or a prefix of threads
	// ("demo/private-*", "demo/*"), always inside Tenant.
	Channel string `json:"channel"`
	// Exp is the expiry, Unix seconds (required). The token is refused from
	// that second on; a subscription it allowed stays until it ends.
	Exp int64 `json:"exp"`
}

const maxTokenLen = 2048

var b64 = base64.RawURLEncoding.Strict()

// SignHS256 makes a token with an HMAC-SHA256 secret.
func SignHS256(c TokenClaims, secret []byte) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("pubsub: empty secret")
	}
	head, err := tokenHead("HS256", c)
	if err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(head))
	return head + "." + b64.EncodeToString(m.Sum(nil)), nil
}

// SignEdDSA makes a token with an Ed25519 private key.
func SignEdDSA(c TokenClaims, key ed25519.PrivateKey) (string, error) {
	if len(key) != ed25519.PrivateKeySize {
		return "", errors.New("pubsub: bad Ed25519 private key")
	}
	head, err := tokenHead("EdDSA", c)
	if err != nil {
		return "", err
	}
	return head + "." + b64.EncodeToString(ed25519.Sign(key, []byte(head))), nil
}

func tokenHead(alg string, c TokenClaims) (string, error) {
	h, _ := json.Marshal(struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
	}{alg, "JWT"})
	p, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	return b64.EncodeToString(h) + "." + b64.EncodeToString(p), nil
}

// Refusal codes for tokens; they are also the error frame codes and the
// reason label of the refusals metric.
const (
	codeTokenRequired = "token_required" // private channel, no token
	codeTokenInvalid  = "token_invalid"  // malformed, unknown alg, bad signature
	codeTokenExpired  = "token_expired"
	codeTokenTenant   = "token_tenant" // signed for another tenant
	codeTokenScope    = "token_scope"  // does not cover the channel
)

// verifyToken checks tok for a subscription to thread of tenant t. It
// returns "" when the token allows it, else a refusal code. The key is
// chosen by the channel's tenant and the algorithm by the key type, so a
// token signed by one tenant never verifies for another and "alg" cannot
// pick a weaker check (no "none", no HMAC keyed with a public key).
func verifyToken(t *tenant, tok, thread string, now time.Time) string {
	if len(tok) > maxTokenLen {
		return codeTokenInvalid
	}
	dot := strings.LastIndexByte(tok, '.')
	if dot < 0 {
		return codeTokenInvalid
	}
	signed, sig64 := tok[:dot], tok[dot+1:]
	head64, claims64, ok := strings.Cut(signed, ".")
	if !ok || strings.IndexByte(claims64, '.') >= 0 {
		return codeTokenInvalid
	}
	var head struct {
		Alg string `json:"alg"`
	}
	hb, err := b64.DecodeString(head64)
	if err != nil || json.Unmarshal(hb, &head) != nil {
		return codeTokenInvalid
	}
	sig, err := b64.DecodeString(sig64)
	if err != nil {
		return codeTokenInvalid
	}
	r := t.r()
	switch {
	case head.Alg == "HS256" && len(r.secret) > 0:
		m := hmac.New(sha256.New, r.secret)
		m.Write([]byte(signed))
		if !hmac.Equal(m.Sum(nil), sig) {
			return codeTokenInvalid
		}
	case head.Alg == "EdDSA" && r.publicKey != nil:
		if len(sig) != ed25519.SignatureSize || !ed25519.Verify(r.publicKey, []byte(signed), sig) {
			return codeTokenInvalid
		}
	default:
		return codeTokenInvalid
	}
	cb, err := b64.DecodeString(claims64)
	if err != nil {
		return codeTokenInvalid
	}
	var c TokenClaims
	if err := json.Unmarshal(cb, &c); err != nil {
		return codeTokenInvalid
	}
	if c.Tenant != t.name {
		return codeTokenTenant
	}
	if c.Exp <= 0 || now.Unix() >= c.Exp {
		return codeTokenExpired
	}
	scopeTenant, pat, ok := strings.Cut(c.Channel, "/")
	if !ok || scopeTenant != t.name {
		return codeTokenTenant
	}
	if !validPattern(pat) || !matchPattern(pat, thread) {
		return codeTokenScope
	}
	return ""
}
