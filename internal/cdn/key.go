package cdn

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"unicode/utf8"
)

// MaxKeyBytes is the longest key accepted: S3's own limit for object keys.
const MaxKeyBytes = 1024

// Key validation errors; the handler answers 400 with the message.
var (
	errKeyEmpty    = errors.New("empty key")
	errKeyLong     = errors.New("key longer than 1024 bytes")
	errKeyUTF8     = errors.New("key is not valid UTF-8")
	errKeyControl  = errors.New("key contains a control character")
	errKeySegment  = errors.New("key has an empty, '.' or '..' segment")
	errKeyBackslsh = errors.New(`key contains a backslash`)
)

// ValidateKey checks a decoded object key. A key is never used as a path on
// disk (files are named by its hash), but it is used as a path by the folder
// origin and shown in logs, so the rules are strict: 1..1024 bytes of UTF-8,
// no control characters (NUL included), no backslash, and '/'-separated
// segments that are neither empty nor "." nor "..". The same key thus names
// the same object on every origin, and no spelling of a key escapes.
func ValidateKey(key string) error {
	if key == "" {
		return errKeyEmpty
	}
	if len(key) > MaxKeyBytes {
		return errKeyLong
	}
	// One pass over the bytes; ASCII is the common case.
	segStart := 0
	for i := 0; i < len(key); {
		b := key[i]
		if b < utf8.RuneSelf {
			switch {
			case b < 0x20 || b == 0x7f:
				return errKeyControl
			case b == '\\':
				return errKeyBackslsh
			case b == '/':
				if badSegment(key[segStart:i]) {
					return errKeySegment
				}
				segStart = i + 1
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(key[i:])
		if r == utf8.RuneError && size <= 1 {
			return errKeyUTF8
		}
		// C1 controls and the Unicode line/paragraph separators make logs
		// and headers lie; nobody names media with them.
		if (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 {
			return errKeyControl
		}
		i += size
	}
	if badSegment(key[segStart:]) {
		return errKeySegment
	}
	return nil
}

func badSegment(s string) bool { return s == "" || s == "." || s == ".." }

// keyHash names a key's files on disk: hex SHA-256, so any key maps to a
// fixed-length safe name and two keys never share files.
func keyHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// tenantOf is the first segment of a key: the tenant or bucket the key
// belongs to when an origin maps tenants to buckets.
func tenantOf(key string) (tenant, rest string) {
	t, r, ok := strings.Cut(key, "/")
	if !ok {
		return "", key
	}
	return t, r
}
