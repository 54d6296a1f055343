package crdt

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

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

// validateValue checks one value of type t at the start of b and returns its length.
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

func core(v bson.RawValue) bsoncore.Value {
	return bsoncore.Value{Type: bsoncore.Type(v.Type), Data: v.Value}
}

func raw(v bsoncore.Value) bson.RawValue {
	return bson.RawValue{Type: bson.Type(v.Type), Value: v.Data}
}

// elements iterates the elements of an already validated document or array.
func elements(doc []byte, fn func(key string, v bsoncore.Value) bool) {
	rest := doc[4 : len(doc)-1]
	for len(rest) > 0 {
		e, r, ok := bsoncore.ReadElement(rest)
		if !ok {
			return // unreachable after validateDoc
		}
		rest = r
		if !fn(e.Key(), e.Value()) {
			return
		}
	}
}

// canonicalRank is MongoDB's canonical type order used by comparisons (BSON comparison order).
func canonicalRank(t bsoncore.Type) int {
	switch t {
	case bsoncore.TypeMinKey:
		return -1
	case bsoncore.TypeUndefined:
		return 0
	case bsoncore.TypeNull:
		return 5
	case bsoncore.TypeDouble, bsoncore.TypeInt32, bsoncore.TypeInt64, bsoncore.TypeDecimal128:
		return 10
	case bsoncore.TypeString, bsoncore.TypeSymbol:
		return 15
	case bsoncore.TypeEmbeddedDocument:
		return 20
	case bsoncore.TypeArray:
		return 25
	case bsoncore.TypeBinary:
		return 30
	case bsoncore.TypeObjectID:
		return 35
	case bsoncore.TypeBoolean:
		return 40
	case bsoncore.TypeDateTime:
		return 45
	case bsoncore.TypeTimestamp:
		return 47
	case bsoncore.TypeRegex:
		return 50
	case bsoncore.TypeDBPointer:
		return 55
	case bsoncore.TypeJavaScript:
		return 60
	case bsoncore.TypeCodeWithScope:
		return 65
	case bsoncore.TypeMaxKey:
		return 127
	}
	return 200
}

// compareValues orders two validated values the way MongoDB's $min/$max and $addToSet equality
// do: canonical type first, numbers by numeric value across int32/int64/double/decimal, strings
// bytewise (no collation), documents and arrays element by element (type, name, value).
func compareValues(a, b bsoncore.Value) int {
	ra, rb := canonicalRank(a.Type), canonicalRank(b.Type)
	if ra != rb {
		return cmp.Compare(ra, rb)
	}
	switch a.Type {
	case bsoncore.TypeMinKey, bsoncore.TypeMaxKey, bsoncore.TypeNull, bsoncore.TypeUndefined:
		return 0
	case bsoncore.TypeDouble, bsoncore.TypeInt32, bsoncore.TypeInt64, bsoncore.TypeDecimal128:
		return compareNumbers(a, b)
	case bsoncore.TypeString, bsoncore.TypeSymbol:
		return strings.Compare(stringOf(a), stringOf(b))
	case bsoncore.TypeEmbeddedDocument, bsoncore.TypeArray:
		return compareDocs(a.Data, b.Data)
	case bsoncore.TypeBinary:
		sa, da := a.Binary()
		sb, db := b.Binary()
		if c := cmp.Compare(len(da), len(db)); c != 0 {
			return c
		}
		if c := cmp.Compare(sa, sb); c != 0 {
			return c
		}
		return bytes.Compare(da, db)
	case bsoncore.TypeObjectID:
		return bytes.Compare(a.Data[:12], b.Data[:12])
	case bsoncore.TypeBoolean:
		return cmp.Compare(a.Data[0], b.Data[0])
	case bsoncore.TypeDateTime:
		return cmp.Compare(a.DateTime(), b.DateTime())
	case bsoncore.TypeTimestamp:
		ta, ia := a.Timestamp()
		tb, ib := b.Timestamp()
		if c := cmp.Compare(ta, tb); c != 0 {
			return c
		}
		return cmp.Compare(ia, ib)
	case bsoncore.TypeRegex:
		pa, oa := a.Regex()
		pb, ob := b.Regex()
		if c := strings.Compare(pa, pb); c != 0 {
			return c
		}
		return strings.Compare(oa, ob)
	case bsoncore.TypeDBPointer:
		na, ia := a.DBPointer()
		nb, ib := b.DBPointer()
		if c := cmp.Compare(len(na), len(nb)); c != 0 {
			return c
		}
		if c := strings.Compare(na, nb); c != 0 {
			return c
		}
		return bytes.Compare(ia[:], ib[:])
	case bsoncore.TypeJavaScript:
		return strings.Compare(a.JavaScript(), b.JavaScript())
	case bsoncore.TypeCodeWithScope:
		ca, sa := a.CodeWithScope()
		cb, sb := b.CodeWithScope()
		if c := strings.Compare(ca, cb); c != 0 {
			return c
		}
		return compareDocs(sa, sb)
	}
	return bytes.Compare(a.Data, b.Data)
}

func stringOf(v bsoncore.Value) string {
	if v.Type == bsoncore.TypeSymbol {
		return v.Symbol()
	}
	return v.StringValue()
}

func compareDocs(a, b []byte) int {
	ea, _ := bsoncore.Document(a).Elements()
	eb, _ := bsoncore.Document(b).Elements()
	for i := 0; i < len(ea) && i < len(eb); i++ {
		va, vb := ea[i].Value(), eb[i].Value()
		if c := cmp.Compare(canonicalRank(va.Type), canonicalRank(vb.Type)); c != 0 {
			return c
		}
		if c := strings.Compare(ea[i].Key(), eb[i].Key()); c != 0 {
			return c
		}
		if c := compareValues(va, vb); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(ea), len(eb))
}

// number is a numeric value split into the cases that big.Rat cannot hold.
type number struct {
	nan bool
	inf int // -1, +1 or 0 (finite)
	r   *big.Rat
}

func toNumber(v bsoncore.Value) number {
	switch v.Type {
	case bsoncore.TypeInt32:
		return number{r: new(big.Rat).SetInt64(int64(v.Int32()))}
	case bsoncore.TypeInt64:
		return number{r: new(big.Rat).SetInt64(v.Int64())}
	case bsoncore.TypeDouble:
		f := v.Double()
		switch {
		case math.IsNaN(f):
			return number{nan: true}
		case math.IsInf(f, 1):
			return number{inf: 1}
		case math.IsInf(f, -1):
			return number{inf: -1}
		}
		return number{r: new(big.Rat).SetFloat64(f)}
	case bsoncore.TypeDecimal128:
		h, l := v.Decimal128()
		d := bson.NewDecimal128(h, l)
		bi, exp, err := d.BigInt()
		if err != nil {
			switch s := d.String(); {
			case s == "NaN":
				return number{nan: true}
			case strings.HasPrefix(s, "-"):
				return number{inf: -1}
			default:
				return number{inf: 1}
			}
		}
		r := new(big.Rat).SetInt(bi)
		if exp != 0 {
			p := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(absInt(exp))), nil)
			if exp > 0 {
				r.Mul(r, new(big.Rat).SetInt(p))
			} else {
				r.Quo(r, new(big.Rat).SetInt(p))
			}
		}
		return number{r: r}
	}
	return number{nan: true}
}

func absInt(i int) int {
	if i < 0 {
		return -i
	}
	return i
}

// compareNumbers compares exactly across numeric types; NaN sorts below every number and equals
// NaN, as in MongoDB.
func compareNumbers(a, b bsoncore.Value) int {
	// Fast paths for the common cases.
	if isInt(a.Type) && isInt(b.Type) {
		return cmp.Compare(a.AsInt64(), b.AsInt64())
	}
	if a.Type == bsoncore.TypeDouble && b.Type == bsoncore.TypeDouble {
		fa, fb := a.Double(), b.Double()
		if !math.IsNaN(fa) && !math.IsNaN(fb) {
			return cmp.Compare(fa, fb)
		}
	}
	na, nb := toNumber(a), toNumber(b)
	switch {
	case na.nan || nb.nan:
		return cmp.Compare(btoi(!na.nan), btoi(!nb.nan))
	case na.inf != 0 || nb.inf != 0:
		return cmp.Compare(na.inf, nb.inf) // finite counts as 0, between -inf and +inf
	}
	return na.r.Cmp(nb.r)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func isInt(t bsoncore.Type) bool { return t == bsoncore.TypeInt32 || t == bsoncore.TypeInt64 }

func isIncNumber(t bsoncore.Type) bool { return isInt(t) || t == bsoncore.TypeDouble }

// addNumbers implements $inc: int32+int32 stays int32 unless it overflows (then int64), ints add as
// int64 (overflow is an error, as in MongoDB), any double makes a double. Decimal128 current values
// are not supported (ok=false: the $inc is a no-op for that field).
func addNumbers(cur, delta bsoncore.Value) (bsoncore.Value, bool) {
	if !isIncNumber(cur.Type) || !isIncNumber(delta.Type) {
		return bsoncore.Value{}, false
	}
	if cur.Type == bsoncore.TypeDouble || delta.Type == bsoncore.TypeDouble {
		return bsoncore.Value{Type: bsoncore.TypeDouble, Data: bsoncore.AppendDouble(nil, cur.AsFloat64()+delta.AsFloat64())}, true
	}
	a, b := cur.AsInt64(), delta.AsInt64()
	s := a + b
	if (b > 0 && s < a) || (b < 0 && s > a) {
		return bsoncore.Value{}, false
	}
	if cur.Type == bsoncore.TypeInt32 && delta.Type == bsoncore.TypeInt32 && s >= math.MinInt32 && s <= math.MaxInt32 {
		return bsoncore.Value{Type: bsoncore.TypeInt32, Data: bsoncore.AppendInt32(nil, int32(s))}, true
	}
	return bsoncore.Value{Type: bsoncore.TypeInt64, Data: bsoncore.AppendInt64(nil, s)}, true
}

// node is a mutable document used while materializing. Values are either a *node (an embedded
// document that was navigated into) or a bsoncore.Value kept as raw bytes; encoding writes raw
// values back untouched, so a document that is parsed and re-encoded is byte-identical.
type node struct {
	keys []string
	vals []nodeVal
}

type nodeVal struct {
	doc *node
	v   bsoncore.Value
}

func (n *node) find(k string) int {
	for i, kk := range n.keys {
		if kk == k {
			return i
		}
	}
	return -1
}

func (n *node) put(k string, v nodeVal) {
	if i := n.find(k); i >= 0 {
		n.vals[i] = v
		return
	}
	n.keys = append(n.keys, k)
	n.vals = append(n.vals, v)
}

func (n *node) remove(i int) {
	n.keys = append(n.keys[:i], n.keys[i+1:]...)
	n.vals = append(n.vals[:i], n.vals[i+1:]...)
}

func parseNode(doc []byte) *node {
	n := &node{}
	elements(doc, func(k string, v bsoncore.Value) bool {
		n.keys = append(n.keys, k)
		n.vals = append(n.vals, nodeVal{v: v})
		return true
	})
	return n
}

// child returns the embedded document at key k, converting a raw embedded document to a node.
// ok=false when k holds something other than a document; n==nil when k is missing.
func (n *node) child(k string) (c *node, ok bool) {
	i := n.find(k)
	if i < 0 {
		return nil, true
	}
	v := &n.vals[i]
	if v.doc != nil {
		return v.doc, true
	}
	if v.v.Type != bsoncore.TypeEmbeddedDocument {
		return nil, false
	}
	v.doc = parseNode(v.v.Data)
	return v.doc, true
}

func (n *node) appendTo(dst []byte) []byte {
	idx, dst := bsoncore.AppendDocumentStart(dst)
	dst = n.appendBody(dst)
	dst, _ = bsoncore.AppendDocumentEnd(dst, idx)
	return dst
}

// appendBody appends the elements only (the caller has written the length placeholder).
func (n *node) appendBody(dst []byte) []byte {
	for i, k := range n.keys {
		v := n.vals[i]
		if v.doc != nil {
			var j int32
			j, dst = bsoncore.AppendDocumentElementStart(dst, k)
			dst = v.doc.appendBody(dst)
			dst, _ = bsoncore.AppendDocumentEnd(dst, j)
			continue
		}
		dst = bsoncore.AppendValueElement(dst, k, v.v)
	}
	return dst
}

// lookup walks comps. It returns the parent node of the last component (nil if some intermediate
// is missing) and blocked=true if an intermediate exists but is not a document (the field operation
// cannot apply and is a no-op).
func (n *node) lookup(comps []string) (parent *node, blocked bool) {
	cur := n
	for _, c := range comps[:len(comps)-1] {
		next, ok := cur.child(c)
		if !ok {
			return nil, true
		}
		if next == nil {
			return nil, false
		}
		cur = next
	}
	return cur, false
}

// ensure walks comps creating missing intermediate documents (appended at the end, as MongoDB
// does). The caller has checked with lookup that nothing blocks the path.
func (n *node) ensure(comps []string) *node {
	cur := n
	for _, c := range comps[:len(comps)-1] {
		next, _ := cur.child(c)
		if next == nil {
			next = &node{}
			cur.put(c, nodeVal{doc: next})
		}
		cur = next
	}
	return cur
}

// current returns the value at comps (exists=false when missing), and blocked as in lookup.
// A node-valued field is encoded so it can be compared.
func (n *node) current(comps []string) (v bsoncore.Value, exists, blocked bool) {
	p, blocked := n.lookup(comps)
	if blocked || p == nil {
		return bsoncore.Value{}, false, blocked
	}
	i := p.find(comps[len(comps)-1])
	if i < 0 {
		return bsoncore.Value{}, false, false
	}
	nv := p.vals[i]
	if nv.doc != nil {
		return bsoncore.Value{Type: bsoncore.TypeEmbeddedDocument, Data: nv.doc.appendTo(nil)}, true, false
	}
	return nv.v, true, false
}

// fieldKind is the per-field operation an Op decomposes into.
type fieldKind uint8

const (
	fSet fieldKind = iota + 1
	fUnset
	fInc
	fMin
	fMax
	fAddToSet // value is always an array of candidate elements
)

func (k fieldKind) String() string {
	switch k {
	case fSet:
		return "$set"
	case fUnset:
		return "$unset"
	case fInc:
		return "$inc"
	case fMin:
		return "$min"
	case fMax:
		return "$max"
	case fAddToSet:
		return "$addToSet"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

func (k fieldKind) assigns() bool { return k == fSet || k == fUnset }

// applyField applies one field operation to doc in place, with MongoDB's per-operator semantics.
// It returns false when the operation cannot apply (wrong type on the path or at the field, $inc
// overflow); then the document is unchanged, which is the deterministic "no-op for that field".
func applyField(doc *node, comps []string, k fieldKind, v bsoncore.Value) bool {
	last := comps[len(comps)-1]
	if k == fUnset {
		p, blocked := doc.lookup(comps)
		if blocked || p == nil {
			return false
		}
		i := p.find(last)
		if i < 0 {
			return false
		}
		p.remove(i)
		return true
	}
	cur, exists, blocked := doc.current(comps)
	if blocked {
		return false
	}
	var nv bsoncore.Value
	switch k {
	case fSet:
		nv = v
	case fInc:
		if !exists {
			nv = v
		} else {
			var ok bool
			if nv, ok = addNumbers(cur, v); !ok {
				return false
			}
		}
	case fMin, fMax:
		if exists {
			c := compareValues(v, cur)
			if (k == fMin && c >= 0) || (k == fMax && c <= 0) {
				return true // applies, nothing to change
			}
		}
		nv = v
	case fAddToSet:
		var elems []bsoncore.Value
		if exists {
			if cur.Type != bsoncore.TypeArray {
				return false
			}
			elements(cur.Data, func(_ string, e bsoncore.Value) bool { elems = append(elems, e); return true })
		}
		n0 := len(elems)
		elements(v.Data, func(_ string, e bsoncore.Value) bool {
			for _, x := range elems {
				if compareValues(x, e) == 0 {
					return true
				}
			}
			elems = append(elems, e)
			return true
		})
		if exists && len(elems) == n0 {
			return true
		}
		nv = bsoncore.Value{Type: bsoncore.TypeArray, Data: bsoncore.BuildArray(nil, elems...)}
	default:
		return false
	}
	doc.ensure(comps).put(last, nodeVal{v: nv})
	return true
}
