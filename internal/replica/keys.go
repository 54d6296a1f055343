package replica

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// docKey is the canonical identity of a document: namespace plus a
// canonical form of its _id. MongoDB compares numbers by value, so _id 1
// (int32), 1 (int64) and 1.0 (double) name the same document; the key maps
// all of them to one string so they share a lease, a cache entry and a tombstone.
// Other types use their type byte and raw bytes (numbers nested inside a
// compound _id are not normalized: use one numeric type inside compound ids).
func docKey(ns string, id bson.RawValue) string {
	b := make([]byte, 0, len(ns)+1+2+len(id.Value)*2)
	b = append(b, ns...)
	b = append(b, 0)
	switch id.Type {
	case bson.TypeInt32, bson.TypeInt64, bson.TypeDouble:
		var f float64
		var i int64
		isInt := true
		switch id.Type {
		case bson.TypeInt32:
			i = int64(int32(binary.LittleEndian.Uint32(id.Value)))
		case bson.TypeInt64:
			i = int64(binary.LittleEndian.Uint64(id.Value))
		default:
			f = math.Float64frombits(binary.LittleEndian.Uint64(id.Value))
			if f == math.Trunc(f) && math.Abs(f) < 1<<62 {
				i = int64(f)
			} else {
				isInt = false
			}
		}
		if isInt {
			b = append(b, 'n')
			b = strconv.AppendInt(b, i, 10)
		} else {
			b = append(b, 'f')
			b = strconv.AppendFloat(b, f, 'g', -1, 64)
		}
	case bson.TypeString:
		b = append(b, 's')
		b = append(b, id.Value[4:len(id.Value)-1]...)
	default:
		b = append(b, 't')
		b = hex.AppendEncode(b, []byte{byte(id.Type)})
		b = hex.AppendEncode(b, id.Value)
	}
	return string(b)
}
