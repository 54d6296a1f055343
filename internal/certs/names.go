package certs

import (
	"errors"
	"net/netip"
	"strings"
)

// NormalizeName lowercases a TLS server name and drops one trailing dot.
func NormalizeName(name string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
}

// ValidName accepts only plain DNS host names a public CA would certify
// for one host: at least two labels of letters, digits and inner hyphens
// (1-63 characters each, 253 in all), a top-level label that is not all
// digits. It refuses wildcards, IP addresses in any spelling, empty labels
// and anything else a scanner might put in SNI to make us order
// certificates. name must already be normalized.
func ValidName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > 253 {
		return errors.New("name longer than 253 characters")
	}
	if _, err := netip.ParseAddr(strings.Trim(name, "[]")); err == nil || strings.HasPrefix(name, "[") {
		return errors.New("IP addresses are not allowed")
	}
	labels := strings.Split(name, ".")
	if len(labels) < 2 {
		return errors.New("need at least two labels")
	}
	for _, l := range labels {
		if l == "" {
			return errors.New("empty label")
		}
		if len(l) > 63 {
			return errors.New("label longer than 63 characters")
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return errors.New("label starts or ends with a hyphen")
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				if c == '*' {
					return errors.New("wildcards are not allowed")
				}
				return errors.New("invalid character in name")
			}
		}
	}
	tld := labels[len(labels)-1]
	if strings.Trim(tld, "0123456789") == "" {
		// "1.2.3.4" and friends ("10.1", "0x7f.1" is caught by the
		// character rule): never a host name, often an IP in disguise.
		return errors.New("numeric top-level label (an IP address?)")
	}
	return nil
}
