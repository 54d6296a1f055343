package pubsub

import (
	"errors"
	"net/url"
	"strings"
)

// Channel names are "{tenant}/{thread}" with a strict alphabet, so that a
// name has exactly one spelling: no case folding, no escapes, no path
// segments, no wildcards. Whatever a client sends is compared byte for byte.
//
//	tenant: 1..32 of a-z 0-9 '-', not starting with '-'
//	thread: 1..128 of A-Z a-z 0-9 '_' '-' '.' ':', starting with a letter or digit

const (
	maxTenantLen = 32
	maxThreadLen = 128
)

func validTenant(s string) bool {
	if len(s) == 0 || len(s) > maxTenantLen || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func threadByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == ':'
}

func validThread(s string) bool {
	if len(s) == 0 || len(s) > maxThreadLen {
		return false
	}
	if c := s[0]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !threadByte(s[i]) {
			return false
		}
	}
	return true
}

// splitChannel validates a channel name and returns its parts.
func splitChannel(ch string) (tenant, thread string, ok bool) {
	tenant, thread, found := strings.Cut(ch, "/")
	if !found || !validTenant(tenant) || !validThread(thread) {
		return "", "", false
	}
	return tenant, thread, true
}

// originPattern is an allowed Origin: scheme, and a host that is exact or
// "*.domain" (any subdomain, not the domain itself), with an optional port.
type originPattern struct {
	scheme, host string // host includes ":port" when given
	wildcard     bool   // host is a suffix ".domain[:port]"
}

func parseOriginPattern(s string) (originPattern, error) {
	u, err := url.Parse(s)
	if err != nil {
		return originPattern{}, err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" || u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return originPattern{}, errors.New(`want scheme://host[:port], e.g. "https://example.com" or "https://*.example.com"`)
	}
	p := originPattern{scheme: u.Scheme, host: strings.ToLower(u.Host)}
	if strings.HasPrefix(p.host, "*.") {
		p.wildcard = true
		p.host = p.host[1:]
	}
	if strings.Contains(p.host, "*") {
		return originPattern{}, errors.New("a wildcard may only be the first label")
	}
	return p, nil
}

func (p originPattern) match(scheme, host string) bool {
	if scheme != p.scheme {
		return false
	}
	if p.wildcard {
		return len(host) > len(p.host) && strings.HasSuffix(host, p.host)
	}
	return host == p.host
}

// originAllowed checks an Origin header value against a tenant's list.
// Browsers always send Origin on websocket handshakes and cross-origin
// EventSource requests; its absence means a non-browser client, which could
// send any Origin anyway, so it is allowed.
func originAllowed(pats []originPattern, origin string) bool {
	if len(pats) == 0 || origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	scheme, host := strings.ToLower(u.Scheme), strings.ToLower(u.Host)
	for _, p := range pats {
		if p.match(scheme, host) {
			return true
		}
	}
	return false
}
