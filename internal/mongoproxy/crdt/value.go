package crdt

import (
	"bytes"
	"cmp"
	"math"
	"math/big"
	"strconv"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

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
