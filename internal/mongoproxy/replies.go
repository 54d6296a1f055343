package mongoproxy

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// Replies on their way back to the client: the hidden metadata field is
// stripped wherever it appears, and the reserved databases are hidden from
// listDatabases; a reply that cannot contain either is passed through
// without being parsed.

// replyFilter says how to rewrite replies on their way back.
type replyFilter struct {
	hideDBs []string // listDatabases: drop these databases
	// onReply, when set, sees the first reply's body (an OP_MSG body or an
	// OP_REPLY's first document; nil if it has none) before the client
	// does: authentication is judged by it, and DDL is logged before the
	// client learns it succeeded.
	onReply func(body bson.Raw)
	// rewrite, when set, replaces the first reply's body (the proxy's own
	// hello): the reply is rebuilt around what it returns, and a stream
	// ends there.
	rewrite func(body bson.Raw) bson.Raw
}

// rewriteReply rebuilds reply (an OP_MSG or OP_REPLY) with body instead of
// its own, without moreToCome.
func rewriteReply(reply []byte, body bson.Raw) ([]byte, error) {
	h, err := wire.ParseHeader(reply)
	if err != nil {
		return nil, err
	}
	switch h.OpCode {
	case wire.OpMsg:
		return wire.AppendMsg(nil, h.RequestID, h.ResponseTo, 0, body), nil
	case wire.OpReply:
		r, err := wire.ParseReply(reply)
		if err != nil {
			return nil, err
		}
		r.Documents = [][]byte{body}
		return wire.AppendReply(nil, r), nil
	default:
		return nil, fmt.Errorf("unexpected op code %d from upstream", h.OpCode)
	}
}

// replyBody is a reply's OP_MSG body or its OP_REPLY's first document (nil
// when it has none or is malformed).
func replyBody(reply []byte) bson.Raw {
	h, err := wire.ParseHeader(reply)
	if err != nil {
		return nil
	}
	switch h.OpCode {
	case wire.OpMsg:
		if m, err := wire.ParseMsg(reply); err == nil {
			return bson.Raw(m.Body)
		}
	case wire.OpReply:
		if r, err := wire.ParseReply(reply); err == nil && len(r.Documents) > 0 {
			return bson.Raw(r.Documents[0])
		}
	}
	return nil
}

var metaFieldBytes = []byte(crdt.MetaField)

// filterReply strips the hidden metadata field from every document of a
// reply (find/aggregate batches, getMore, findAndModify values, change
// events: wherever it appears) and hides the proxy's database from
// listDatabases. Replies that cannot contain the field are passed through
// without being parsed.
func filterReply(reply []byte, f replyFilter) (out []byte, more bool, err error) {
	h, err := wire.ParseHeader(reply)
	if err != nil {
		return nil, false, err
	}
	switch h.OpCode {
	case wire.OpMsg:
		if len(reply) >= wire.HeaderLen+4 {
			more = binary.LittleEndian.Uint32(reply[wire.HeaderLen:])&wire.FlagMoreToCome != 0
		}
		if len(f.hideDBs) == 0 && !bytes.Contains(reply, metaFieldBytes) {
			return reply, more, nil
		}
		m, err := wire.ParseMsg(reply)
		if err != nil {
			return nil, false, err
		}
		body, changed := wire.StripField(m.Body, crdt.MetaField)
		for _, name := range f.hideDBs {
			if b, ok := hideDatabase(body, name); ok {
				body, changed = b, true
			}
		}
		seqs := m.Sequences
		for i, s := range seqs {
			for j, d := range s.Docs {
				if nd, ch := wire.StripField(d, crdt.MetaField); ch {
					seqs[i].Docs[j], changed = nd, true
				}
			}
		}
		if !changed {
			return reply, more, nil
		}
		return wire.AppendMsg(nil, h.RequestID, h.ResponseTo, m.Flags, body, seqs...), more, nil
	case wire.OpReply:
		if !bytes.Contains(reply, metaFieldBytes) {
			return reply, false, nil
		}
		r, err := wire.ParseReply(reply)
		if err != nil {
			return nil, false, err
		}
		for i, d := range r.Documents {
			r.Documents[i], _ = wire.StripField(d, crdt.MetaField)
		}
		return wire.AppendReply(nil, r), false, nil
	default:
		return nil, false, fmt.Errorf("unexpected op code %d from upstream", h.OpCode)
	}
}

// hideDatabase removes the entry named name from a listDatabases reply.
func hideDatabase(body []byte, name string) ([]byte, bool) {
	dbs, err := bson.Raw(body).LookupErr("databases")
	if err != nil || dbs.Type != bson.TypeArray {
		return body, false
	}
	vals, err := bson.Raw(dbs.Value).Values()
	if err != nil {
		return body, false
	}
	var keep []bsoncore.Value
	for _, v := range vals {
		if v.Type == bson.TypeEmbeddedDocument {
			if n, err := bson.Raw(v.Value).LookupErr("name"); err == nil && n.Type == bson.TypeString && n.StringValue() == name {
				continue
			}
		}
		keep = append(keep, bsoncore.Value{Type: bsoncore.Type(v.Type), Data: v.Value})
	}
	if len(keep) == len(vals) {
		return body, false
	}
	arr := bsoncore.BuildArray(nil, keep...)
	return replaceTopLevel(bson.Raw(body), "databases", bson.Raw(arr)), true
}

// removeTopLevel returns doc without its top-level field key.
func removeTopLevel(doc bson.Raw, key string) (bson.Raw, bool) {
	elems, err := doc.Elements()
	if err != nil {
		return doc, false
	}
	idx, b := bsoncore.AppendDocumentStart(nil)
	found := false
	for _, e := range elems {
		if e.Key() == key {
			found = true
			continue
		}
		b = append(b, e...)
	}
	if !found {
		return doc, false
	}
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b, true
}

// replaceTopLevel returns doc with the value of key replaced by v (an
// embedded document or array, keeping the original element type).
func replaceTopLevel(doc bson.Raw, key string, v bson.Raw) bson.Raw {
	elems, _ := doc.Elements()
	idx, b := bsoncore.AppendDocumentStart(nil)
	for _, e := range elems {
		if e.Key() == key {
			b = bsoncore.AppendHeader(b, bsoncore.Type(e.Value().Type), key)
			b = append(b, v...)
			continue
		}
		b = append(b, e...)
	}
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}
