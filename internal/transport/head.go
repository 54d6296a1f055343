package transport

import "bytes"

// fastHead is a request head the HTTP/1.1 fast path may answer: a GET or
// HEAD of a plain origin-form path, HTTP/1.1, one Host, and no field that
// could change the answer or the framing. Its slices point into the read
// buffer.
type fastHead struct {
	method, path, host []byte
	n                  int // bytes of the head, final CRLF included
}

// headResult is what parseFastHead found.
type headResult int

const (
	headMore    headResult = iota // no complete head yet: read more
	headOK                        // a head the fast path may answer
	headDecline                   // a complete head net/http must handle
	headTooLong                   // (readHead) over the buffer or MaxHeaderBytes
)

func (r headResult) reason() handoffReason {
	if r == headTooLong {
		return handoffLong
	}
	return handoffHead
}

// parseFastHead parses the request head at the start of b. It accepts only
// what net/http would parse the same way and answer without looking at
// anything the fast path ignores; every doubt is headDecline, which hands
// the bytes, untouched, to net/http (which then answers, or refuses, as it
// always did). So this parser never has to produce an error response of
// its own, and a request it declines costs only the scan.
//
// Declined: any method but GET and HEAD; any version but HTTP/1.1; a
// request-target that is not a clean origin-form path of unreserved and
// most sub-delim characters (no query, no percent-encoding, no dot segments, no
// empty segments: net/http's ServeMux would unescape, redirect or route
// those differently); a missing, repeated or odd Host; header lines that
// are not "token: value" with CRLF endings (obs-fold, bare LF, control
// characters); and every field that changes the response or the framing:
// Range, If-*, Content-Length, Transfer-Encoding, Expect, Upgrade, and
// Connection unless it is just "keep-alive".
func parseFastHead(b []byte) (fastHead, headResult) {
	end := bytes.Index(b, crlfcrlf)
	if end < 0 {
		// A bare LF could end a head net/http accepts; the fast path never
		// finds its end, so it would wait for bytes that never come.
		if bytes.Contains(b, lflf) || bytes.Contains(b, lfcrlf) {
			return fastHead{}, headDecline
		}
		return fastHead{}, headMore
	}
	h := fastHead{n: end + 4}
	head := b[:end+2] // each line keeps its CRLF
	line, rest, ok := cutLine(head)
	if !ok {
		return h, headDecline
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return h, headDecline
	}
	h.method = line[:sp1]
	if string(h.method) != "GET" && string(h.method) != "HEAD" {
		return h, headDecline
	}
	target, proto, ok := bytes.Cut(line[sp1+1:], []byte{' '})
	if !ok || string(proto) != "HTTP/1.1" || !cleanPath(target) {
		return h, headDecline
	}
	h.path = target
	for len(rest) > 0 {
		line, rest, ok = cutLine(rest)
		if !ok {
			return h, headDecline
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return h, headDecline
		}
		name := line[:colon]
		for _, c := range name {
			if !isTokenChar(c) {
				return h, headDecline
			}
		}
		value := trimOWS(line[colon+1:])
		for _, c := range value {
			if c < ' ' && c != '\t' || c == 0x7f {
				return h, headDecline
			}
		}
		switch {
		case equalFold(name, "host"):
			if h.host != nil || !validHost(value) {
				return h, headDecline
			}
			h.host = value
		case equalFold(name, "connection"):
			if !equalFold(value, "keep-alive") {
				return h, headDecline
			}
		case changesAnswer(name), equalFold(name, "content-length"), equalFold(name, "transfer-encoding"),
			equalFold(name, "upgrade"):
			return h, headDecline
		}
	}
	if h.host == nil {
		return h, headDecline
	}
	return h, headOK
}

var (
	crlfcrlf = []byte("\r\n\r\n")
	lflf     = []byte("\n\n")
	lfcrlf   = []byte("\n\r\n")
)

// cutLine splits off one CRLF-terminated line; false for a bare CR or LF
// inside it or a line starting with whitespace (obs-fold).
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 1 || b[i-1] != '\r' {
		return nil, nil, false
	}
	line = b[:i-1]
	if bytes.IndexByte(line, '\r') >= 0 || len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
		return nil, nil, false
	}
	return line, b[i+1:], true
}

// cleanPath: "/" followed by segments of unreserved characters and the
// sub-delims net/url keeps as they are (RFC 3986), no empty segment, no "." or ".." segment. Such a
// path is its own unescaped and cleaned form, so ServeMux routes it as is.
func cleanPath[T string | []byte](p T) bool {
	if len(p) == 0 || p[0] != '/' {
		return false
	}
	seg := 0 // length of the current segment
	dots := 0
	for i := 1; i < len(p); i++ {
		c := p[i]
		if c == '/' {
			if seg == 0 || seg == dots && dots <= 2 {
				return false
			}
			seg, dots = 0, 0
			continue
		}
		if !isPathChar(c) {
			return false
		}
		seg++
		if c == '.' {
			dots++
		}
	}
	// A trailing "/" (seg 0) is a real path ("/media/" is a directory-like
	// key ServeMux still routes as is); a trailing "." or ".." is not.
	return !(seg > 0 && seg == dots && dots <= 2)
}

func isPathChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '$', '&', '+', ',', ';', '=', ':', '@':
		return true
	}
	// Not '!', '\'', '(', ')' or '*': net/url escapes them in a path's
	// canonical form, so a request with them has a RawPath, and ServeMux
	// and handlers may see the path differently; net/http serves those.
	return false
}

// isTokenChar: RFC 9110 tchar.
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// validHost: a host name or IPv4 address with an optional port, or a
// bracketed IPv6 literal with one: letters, digits, '-', '.', ':', '[' and
// ']'. Narrower than what net/http accepts, which is fine: anything else is
// declined and net/http decides.
func validHost(v []byte) bool {
	if len(v) == 0 || len(v) > 255 {
		return false
	}
	for _, c := range v {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares b with the lower-case ASCII string s, ignoring case.
// changesAnswer reports whether a request field named name can change a
// fast answer (a range, a condition, an expectation): both fast paths
// decline such requests.
func changesAnswer[T string | []byte](name T) bool {
	return equalFold(name, "range") || equalFold(name, "expect") || len(name) > 3 && equalFold(name[:3], "if-")
}

func equalFold[T string | []byte](b T, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
