package crdt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// Strict BSON validation of what peers send (ops arrive from the network):
// every length, type and terminator is checked before anything is read.

// maxDepth bounds nesting when validating untrusted BSON (MongoDB allows 100 levels of documents).
const maxDepth = 200

var errBSON = errors.New("malformed BSON")

// validateDoc checks that b is exactly one well-formed BSON document, recursively. bsoncore's own
// Validate only checks lengths one level deep; everything else in this package walks values with
// bsoncore after this check, which is what makes those walks panic-free on hostile bytes.
func validateDoc(b []byte, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: nested deeper than %d levels", errBSON, maxDepth)
	}
	if len(b) < 5 {
		return fmt.Errorf("%w: document shorter than 5 bytes", errBSON)
	}
	n := int(int32(binary.LittleEndian.Uint32(b)))
	if n != len(b) {
		return fmt.Errorf("%w: document length %d, have %d bytes", errBSON, n, len(b))
	}
	if b[n-1] != 0 {
		return fmt.Errorf("%w: document not NUL-terminated", errBSON)
	}
	rest := b[4 : n-1]
	for len(rest) > 0 {
		t := bsoncore.Type(rest[0])
		rest = rest[1:]
		k := bytes.IndexByte(rest, 0)
		if k < 0 {
			return fmt.Errorf("%w: unterminated key", errBSON)
		}
		rest = rest[k+1:]
		l, err := validateValue(t, rest, depth)
		if err != nil {
			return err
		}
		rest = rest[l:]
	}
	return nil
}

// validateValue checks one value of type t at the start of b and returns its length. It is one
// case per BSON type, longer than most functions here: split, the types would be harder to check
// against the specification.
func validateValue(t bsoncore.Type, b []byte, depth int) (int, error) {
	i32 := func(off int) (int, bool) {
		if len(b) < off+4 {
			return 0, false
		}
		return int(int32(binary.LittleEndian.Uint32(b[off:]))), true
	}
	str := func(off int) (int, error) { // BSON string at off: int32 length incl. NUL, bytes, NUL
		l, ok := i32(off)
		if !ok || l < 1 || len(b)-off-4 < l || b[off+4+l-1] != 0 {
			return 0, fmt.Errorf("%w: bad string", errBSON)
		}
		return 4 + l, nil
	}
	fixed := func(n int) (int, error) {
		if len(b) < n {
			return 0, fmt.Errorf("%w: truncated %s", errBSON, t)
		}
		return n, nil
	}
	switch t {
	case bsoncore.TypeDouble, bsoncore.TypeDateTime, bsoncore.TypeInt64, bsoncore.TypeTimestamp:
		return fixed(8)
	case bsoncore.TypeInt32:
		return fixed(4)
	case bsoncore.TypeDecimal128:
		return fixed(16)
	case bsoncore.TypeObjectID:
		return fixed(12)
	case bsoncore.TypeBoolean:
		if len(b) < 1 || b[0] > 1 {
			return 0, fmt.Errorf("%w: bad boolean", errBSON)
		}
		return 1, nil
	case bsoncore.TypeNull, bsoncore.TypeUndefined, bsoncore.TypeMinKey, bsoncore.TypeMaxKey:
		return 0, nil
	case bsoncore.TypeString, bsoncore.TypeJavaScript, bsoncore.TypeSymbol:
		return str(0)
	case bsoncore.TypeEmbeddedDocument, bsoncore.TypeArray:
		l, ok := i32(0)
		if !ok || l < 5 || l > len(b) {
			return 0, fmt.Errorf("%w: bad %s length", errBSON, t)
		}
		return l, validateDoc(b[:l], depth+1)
	case bsoncore.TypeBinary:
		l, ok := i32(0)
		if !ok || l < 0 || len(b)-5 < l {
			return 0, fmt.Errorf("%w: bad binary length", errBSON)
		}
		if b[4] == 2 { // old binary subtype: an inner length that must match
			il, ok := i32(5)
			if !ok || il != l-4 {
				return 0, fmt.Errorf("%w: bad binary subtype 2 length", errBSON)
			}
		}
		return 5 + l, nil
	case bsoncore.TypeRegex:
		p := bytes.IndexByte(b, 0)
		if p < 0 {
			return 0, fmt.Errorf("%w: bad regex", errBSON)
		}
		o := bytes.IndexByte(b[p+1:], 0)
		if o < 0 {
			return 0, fmt.Errorf("%w: bad regex options", errBSON)
		}
		return p + 1 + o + 1, nil
	case bsoncore.TypeDBPointer:
		l, err := str(0)
		if err != nil {
			return 0, err
		}
		if len(b) < l+12 {
			return 0, fmt.Errorf("%w: truncated dbpointer", errBSON)
		}
		return l + 12, nil
	case bsoncore.TypeCodeWithScope:
		l, ok := i32(0)
		if !ok || l < 14 || l > len(b) {
			return 0, fmt.Errorf("%w: bad code with scope length", errBSON)
		}
		sl, err := str(4)
		if err != nil || 4+sl >= l {
			return 0, fmt.Errorf("%w: bad code with scope", errBSON)
		}
		return l, validateDoc(b[4+sl:l], depth+1)
	default:
		return 0, fmt.Errorf("%w: unknown type 0x%02x", errBSON, byte(t))
	}
}

// validateRawValue checks a standalone value.
func validateRawValue(v bson.RawValue) error {
	if v.Type == 0 {
		return fmt.Errorf("%w: missing value", errBSON)
	}
	l, err := validateValue(bsoncore.Type(v.Type), v.Value, 0)
	if err != nil {
		return err
	}
	if l != len(v.Value) {
		return fmt.Errorf("%w: %d trailing bytes after %s value", errBSON, len(v.Value)-l, v.Type)
	}
	return nil
}
