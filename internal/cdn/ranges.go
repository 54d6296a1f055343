package cdn

import (
	"errors"
	"net/http"
	"net/textproto"
	"strings"
)

// httpRange is one satisfiable byte range: [start, start+length).
type httpRange struct{ start, length int64 }

var (
	errRangeSyntax = errors.New("malformed Range header")
	errRangeUnsat  = errors.New("no satisfiable range")
	errRangeMany   = errors.New("too many ranges")
	errRangeHuge   = errors.New("ranges ask for more bytes than the object has")
)

// parseRanges reads a Range header (RFC 9110 §14.2) for an object of size
// bytes. ok is false when the header must be ignored (a unit other than
// bytes): the whole object is sent. An error means 416. Ranges past the end
// are clipped; unsatisfiable ones are dropped; when none is left the answer
// is 416. Numbers that overflow, more than maxRanges ranges, or ranges whose
// total exceeds the object (overlaps used to amplify) are rejected too.
func parseRanges(s string, size int64, maxRanges int) (ranges []httpRange, ok bool, err error) {
	unit, spec, found := strings.Cut(s, "=")
	if !found {
		return nil, false, errRangeSyntax
	}
	if !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return nil, false, nil
	}
	var total int64
	n := 0
	for part := range strings.SplitSeq(spec, ",") {
		part = textproto.TrimString(part)
		if part == "" {
			continue // empty list elements are allowed
		}
		n++
		if n > maxRanges {
			return nil, true, errRangeMany
		}
		first, last, found := strings.Cut(part, "-")
		if !found {
			return nil, true, errRangeSyntax
		}
		first, last = textproto.TrimString(first), textproto.TrimString(last)
		var r httpRange
		if first == "" {
			// Suffix: the last N bytes.
			nlast, ok := parseDigits(last)
			if !ok {
				return nil, true, errRangeSyntax
			}
			if nlast == 0 || size == 0 {
				continue // unsatisfiable
			}
			nlast = min(nlast, size)
			r = httpRange{size - nlast, nlast}
		} else {
			start, ok := parseDigits(first)
			if !ok {
				return nil, true, errRangeSyntax
			}
			end := size - 1
			if last != "" {
				e, ok := parseDigits(last)
				if !ok || e < start {
					return nil, true, errRangeSyntax
				}
				end = min(e, size-1)
			}
			if start >= size {
				continue // unsatisfiable
			}
			r = httpRange{start, end - start + 1}
		}
		total += r.length
		if total > size {
			return nil, true, errRangeHuge
		}
		ranges = append(ranges, r)
	}
	if n == 0 {
		return nil, true, errRangeSyntax
	}
	if len(ranges) == 0 {
		return nil, true, errRangeUnsat
	}
	return ranges, true, nil
}

// parseDigits parses a non-empty run of ASCII digits without overflow.
func parseDigits(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	var v int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if v > (1<<63-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

// condResult is what the validators in a request decide.
type condResult int

const (
	condNone        condResult = iota // send the object
	condNotModified                   // 304
	condFailed                        // 412
)

// checkConditions evaluates If-Match, If-Unmodified-Since, If-None-Match and
// If-Modified-Since in the order of RFC 9110 §13.2.2, as http.ServeContent
// does. The common browser revalidation (If-None-Match with the exact ETag,
// or If-Modified-Since with the exact Last-Modified) compares strings only.
func checkConditions(r *http.Request, h *objHeaders) condResult {
	hdr := r.Header
	if im := hdr["If-Match"]; len(im) > 0 {
		if !etagListMatch(im, h.etag, true) {
			return condFailed
		}
	} else if ius := hdr["If-Unmodified-Since"]; len(ius) > 0 && !h.lastMod.IsZero() {
		if t, err := http.ParseTime(ius[0]); err == nil && h.lastMod.After(t) {
			return condFailed
		}
	}
	if inm := hdr["If-None-Match"]; len(inm) > 0 {
		if etagListMatch(inm, h.etag, false) {
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				return condNotModified
			}
			return condFailed
		}
		return condNone
	}
	if ims := hdr["If-Modified-Since"]; len(ims) > 0 && !h.lastMod.IsZero() &&
		(r.Method == http.MethodGet || r.Method == http.MethodHead) {
		if ims[0] == h.lmStr {
			return condNotModified
		}
		if t, err := http.ParseTime(ims[0]); err == nil && !h.lastMod.After(t) {
			return condNotModified
		}
	}
	return condNone
}

// ifRangeAllows reports whether a Range may be honoured under If-Range: the
// validator must be the current strong ETag or exactly the Last-Modified.
func ifRangeAllows(r *http.Request, h *objHeaders) bool {
	ir := r.Header["If-Range"]
	if len(ir) == 0 {
		return true
	}
	v := textproto.TrimString(ir[0])
	if strings.HasPrefix(v, `"`) || strings.HasPrefix(v, "W/") {
		return h.etag != "" && !strings.HasPrefix(v, "W/") && !strings.HasPrefix(h.etag, "W/") && v == h.etag
	}
	if h.lastMod.IsZero() {
		return false
	}
	t, err := http.ParseTime(v)
	return err == nil && t.Equal(h.lastMod)
}

// etagListMatch checks an If-Match/If-None-Match list against etag: "*"
// matches any existing representation; strong comparison for If-Match,
// weak for If-None-Match.
func etagListMatch(vals []string, etag string, strong bool) bool {
	if etag == "" {
		return false
	}
	for _, v := range vals {
		for {
			v = textproto.TrimString(v)
			if v == "" {
				break
			}
			if v[0] == ',' {
				v = v[1:]
				continue
			}
			if v[0] == '*' {
				return true
			}
			tag, rest, ok := scanETag(v)
			if !ok {
				break
			}
			if strong {
				if !strings.HasPrefix(tag, "W/") && !strings.HasPrefix(etag, "W/") && tag == etag {
					return true
				}
			} else if strings.TrimPrefix(tag, "W/") == strings.TrimPrefix(etag, "W/") {
				return true
			}
			v = rest
		}
	}
	return false
}

// scanETag reads one entity-tag (W/"..." or "...") from the start of s.
func scanETag(s string) (tag, rest string, ok bool) {
	start := 0
	if strings.HasPrefix(s, "W/") {
		start = 2
	}
	if len(s)-start < 2 || s[start] != '"' {
		return "", "", false
	}
	for i := start + 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			return s[:i+1], s[i+1:], true
		case c == 0x21 || (c >= 0x23 && c <= 0x7e) || c >= 0x80:
		default:
			return "", "", false
		}
	}
	return "", "", false
}
