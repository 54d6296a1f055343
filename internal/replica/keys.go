package replica

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Keys name documents (docKey) and DDL records (ddlID). Both are stored as
// _id strings in edgenode_meta, so they must be storable on every backend:
// PostgreSQL's jsonb (FerretDB's backend there) refuses a NUL character,
// and a string must be valid UTF-8. A key is therefore
//
//	<len(ns) in decimal> ":" <ns> ":" <rest>
//
// The length makes the split unambiguous whatever the namespace holds (a
// collection name may contain ':' and almost anything else); rest holds
// only printable characters, or a string _id's own text when that is valid
// UTF-8 without NUL. Keys before this form (keyFormat 1) joined the
// namespace and the rest with a NUL byte; migrateKeys converts what a
// database stored then, and LoadSnapshot what a peer still sends.

// nsKeyPrefix is the part of every key of namespace ns before its rest.
func nsKeyPrefix(ns string) string {
	return strconv.Itoa(len(ns)) + ":" + ns + ":"
}

// docKey is the canonical identity of a document: namespace plus a
// canonical form of its _id. MongoDB compares numbers by value, so _id 1
// (int32), 1 (int64) and 1.0 (double) name the same document; the key maps
// all of them to one string so they share a lease, a cache entry and a tombstone.
// Other types use their type byte and raw bytes in hex (numbers nested
// inside a compound _id are not normalized: use one numeric type inside
// compound ids), and so do strings that are not valid UTF-8 or hold a NUL.
func docKey(ns string, id bson.RawValue) string {
	b := make([]byte, 0, len(ns)+8+len(id.Value)*2)
	b = append(b, nsKeyPrefix(ns)...)
	return string(appendIDKey(b, id, false))
}

// legacyDocKey is docKey as keyFormat 1 wrote it.
func legacyDocKey(ns string, id bson.RawValue) string {
	b := make([]byte, 0, len(ns)+3+len(id.Value)*2)
	b = append(b, ns...)
	b = append(b, 0)
	return string(appendIDKey(b, id, true))
}

// appendIDKey appends the canonical form of id. legacy keeps every string
// as it is, as keyFormat 1 did.
func appendIDKey(b []byte, id bson.RawValue, legacy bool) []byte {
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
			return strconv.AppendInt(b, i, 10)
		}
		b = append(b, 'f')
		return strconv.AppendFloat(b, f, 'g', -1, 64)
	case bson.TypeString:
		if s := id.Value[4 : len(id.Value)-1]; legacy || (utf8.Valid(s) && !strings.Contains(string(s), "\x00")) {
			b = append(b, 's')
			return append(b, s...)
		}
	}
	b = append(b, 't')
	b = hex.AppendEncode(b, []byte{byte(id.Type)})
	return hex.AppendEncode(b, id.Value)
}

// ddlID is the _id of the DDL record of (ns, key).
func ddlID(ns, key string) string { return nsKeyPrefix(ns) + key }

// legacyDDLID is ddlID as keyFormat 1 wrote it.
func legacyDDLID(ns, key string) string { return ns + "\x00" + key }
