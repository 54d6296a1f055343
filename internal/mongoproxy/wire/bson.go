package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// MaxDepth bounds document nesting so a hostile message cannot exhaust the
// stack. MongoDB itself refuses nesting beyond 100 levels for stored data;
// commands carry a little more, hence the margin.
const MaxDepth = 180

// ValidateBSON checks that doc is exactly one well-formed BSON document:
// the length prefix equals len(doc), every element has a known type and a
// NUL-terminated key, every value fits its declared length (strings end in
// NUL, embedded documents and arrays are validated recursively, binary and
// code-with-scope sizes agree), and nothing trails the final NUL.
func ValidateBSON(doc []byte) error {
	return validateDoc(doc, 0)
}

func validateDoc(doc []byte, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("bson: nesting deeper than %d", MaxDepth)
	}
	if len(doc) < 5 {
		return fmt.Errorf("bson: document of %d bytes is too short", len(doc))
	}
	if n := int(int32(binary.LittleEndian.Uint32(doc))); n != len(doc) {
		return fmt.Errorf("bson: document length %d does not match %d bytes", n, len(doc))
	}
	if doc[len(doc)-1] != 0 {
		return errors.New("bson: document does not end with NUL")
	}
	p := doc[4 : len(doc)-1]
	for len(p) > 0 {
		t := p[0]
		k := bytes.IndexByte(p[1:], 0)
		if k < 0 {
			return errors.New("bson: element key missing NUL terminator")
		}
		p = p[k+2:]
		n, err := valueLen(t, p, depth)
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// valueLen returns the length of a value of type t at the start of p,
// validating it. One case per BSON type: kept whole, as the
// specification lists them, to be checked against it.
func valueLen(t byte, p []byte, depth int) (int, error) {
	fixed := func(n int) (int, error) {
		if len(p) < n {
			return 0, fmt.Errorf("bson: value of type %#x truncated", t)
		}
		return n, nil
	}
	switch t {
	case 0x01, 0x09, 0x11, 0x12: // double, datetime, timestamp, int64
		return fixed(8)
	case 0x10: // int32
		return fixed(4)
	case 0x07: // ObjectId
		return fixed(12)
	case 0x13: // decimal128
		return fixed(16)
	case 0x06, 0x0A, 0xFF, 0x7F: // undefined, null, minKey, maxKey
		return 0, nil
	case 0x08: // bool
		if len(p) < 1 {
			return 0, errors.New("bson: bool truncated")
		}
		if p[0] > 1 {
			return 0, fmt.Errorf("bson: bool byte %#x is not 0 or 1", p[0])
		}
		return 1, nil
	case 0x02, 0x0D, 0x0E: // string, JavaScript, symbol
		return stringLen(p)
	case 0x03, 0x04: // document, array
		n, err := docLen(p)
		if err != nil {
			return 0, fmt.Errorf("bson: %w", err)
		}
		return n, validateDoc(p[:n], depth+1)
	case 0x05: // binary
		if len(p) < 5 {
			return 0, errors.New("bson: binary truncated")
		}
		n := int(int32(binary.LittleEndian.Uint32(p)))
		if n < 0 || n > len(p)-5 {
			return 0, fmt.Errorf("bson: binary length %d invalid", n)
		}
		if p[4] == 0x02 { // old binary: an inner length that must agree
			if n < 4 || int(int32(binary.LittleEndian.Uint32(p[5:]))) != n-4 {
				return 0, errors.New("bson: old binary subtype inner length mismatch")
			}
		}
		return 5 + n, nil
	case 0x0B: // regex: two cstrings
		i := bytes.IndexByte(p, 0)
		if i < 0 {
			return 0, errors.New("bson: regex pattern missing NUL")
		}
		j := bytes.IndexByte(p[i+1:], 0)
		if j < 0 {
			return 0, errors.New("bson: regex options missing NUL")
		}
		return i + 1 + j + 1, nil
	case 0x0C: // DBPointer: string + ObjectId
		n, err := stringLen(p)
		if err != nil {
			return 0, err
		}
		if len(p)-n < 12 {
			return 0, errors.New("bson: DBPointer truncated")
		}
		return n + 12, nil
	case 0x0F: // code with scope: int32 total, string, document
		if len(p) < 4 {
			return 0, errors.New("bson: code with scope truncated")
		}
		total := int(int32(binary.LittleEndian.Uint32(p)))
		if total < 4+5+5 || total > len(p) {
			return 0, fmt.Errorf("bson: code with scope length %d invalid", total)
		}
		inner := p[4:total]
		n, err := stringLen(inner)
		if err != nil {
			return 0, err
		}
		if err := validateDoc(inner[n:], depth+1); err != nil {
			return 0, err
		}
		return total, nil
	default:
		return 0, fmt.Errorf("bson: unknown element type %#x", t)
	}
}

func stringLen(p []byte) (int, error) {
	if len(p) < 4 {
		return 0, errors.New("bson: string truncated")
	}
	n := int(int32(binary.LittleEndian.Uint32(p)))
	if n < 1 || n > len(p)-4 {
		return 0, fmt.Errorf("bson: string length %d invalid", n)
	}
	if p[4+n-1] != 0 {
		return 0, errors.New("bson: string does not end with NUL")
	}
	return 4 + n, nil
}

// StripField removes every element named name from doc, at any depth
// (embedded documents and arrays included), and reports whether anything
// was removed. doc must be valid (ValidateBSON). When nothing is removed
// doc itself is returned, so the common case allocates nothing.
func StripField(doc []byte, name string) ([]byte, bool) {
	if !bytes.Contains(doc, []byte(name)) {
		return doc, false
	}
	out, changed := stripDoc(nil, doc, name)
	if !changed {
		return doc, false
	}
	return out, true
}

// stripDoc appends doc without name-elements to dst.
func stripDoc(dst, doc []byte, name string) ([]byte, bool) {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	changed := false
	p := doc[4 : len(doc)-1]
	for len(p) > 0 {
		t := p[0]
		k := bytes.IndexByte(p[1:], 0)
		key := p[1 : k+1]
		hdr := p[:k+2]
		p = p[k+2:]
		n, _ := valueLen(t, p, 0)
		val := p[:n]
		p = p[n:]
		if string(key) == name {
			changed = true
			continue
		}
		if (t == 0x03 || t == 0x04) && bytes.Contains(val, []byte(name)) {
			dst = append(dst, hdr...)
			var c bool
			dst, c = stripDoc(dst, val, name)
			changed = changed || c
			continue
		}
		dst = append(dst, hdr...)
		dst = append(dst, val...)
	}
	dst = append(dst, 0)
	binary.LittleEndian.PutUint32(dst[start:], uint32(len(dst)-start))
	return dst, changed
}
