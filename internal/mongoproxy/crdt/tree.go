package crdt

import (
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

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
