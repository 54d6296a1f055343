package mongoproxy

import (
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// projNode is a projection tree: leaf (include/exclude this field) or
// children by field name.
type projNode struct {
	leaf     bool
	children map[string]*projNode
}

// project applies a findAndModify `fields` projection to doc (nil doc: only
// validate). The proxy builds findAndModify's value itself, so it projects
// itself: inclusion and exclusion of (dotted) fields and _id, as MongoDB
// does; projection operators ($slice, $elemMatch, $meta, positional) and
// computed fields are refused.
func project(doc bson.D, fields bson.Raw) (bson.D, *mongoError) {
	elems, err := fields.Elements()
	if err != nil {
		return nil, errorf(codeFailedToParse, "fields: %v", err)
	}
	root := &projNode{children: map[string]*projNode{}}
	includeID := true
	mode := 0 // 1 inclusion, -1 exclusion
	for _, e := range elems {
		path, v := e.Key(), e.Value()
		var on bool
		switch v.Type {
		case bson.TypeBoolean:
			on = v.Boolean()
		case bson.TypeInt32, bson.TypeInt64, bson.TypeDouble:
			f, _ := v.AsFloat64OK()
			if v.Type != bson.TypeDouble {
				i, _ := v.AsInt64OK()
				f = float64(i)
			}
			on = f != 0
		default:
			return nil, errorf(codeBadValue, "edgenode: the projection of '%s' (%s) is not supported in findAndModify on replicated collections: only inclusion and exclusion of fields", path, v)
		}
		if strings.Contains(path, "$") {
			return nil, errorf(codeBadValue, "edgenode: the positional projection '%s' is not supported in findAndModify on replicated collections", path)
		}
		if path == "_id" {
			includeID = on
			continue
		}
		m := -1
		if on {
			m = 1
		}
		if mode != 0 && mode != m {
			if m == 1 {
				return nil, errorf(codeBadValue, "Cannot do inclusion on field %s in exclusion projection", path)
			}
			return nil, errorf(codeBadValue, "Cannot do exclusion on field %s in inclusion projection", path)
		}
		mode = m
		n := root
		for _, c := range strings.Split(path, ".") {
			if n.leaf {
				break
			}
			child := n.children[c]
			if child == nil {
				child = &projNode{children: map[string]*projNode{}}
				n.children[c] = child
			}
			n = child
		}
		n.leaf, n.children = true, nil
	}
	if doc == nil {
		return nil, nil
	}
	if mode >= 0 && len(root.children) > 0 {
		out := includeDoc(doc, root)
		if !includeID {
			out = dropKey(out, "_id")
		} else if !hasKey(out, "_id") {
			for _, e := range doc {
				if e.Key == "_id" {
					out = append(bson.D{e}, out...)
				}
			}
		}
		return out, nil
	}
	out := excludeDoc(doc, root)
	if !includeID {
		out = dropKey(out, "_id")
	}
	return out, nil
}

func includeDoc(doc bson.D, n *projNode) bson.D {
	out := bson.D{}
	for _, e := range doc {
		child := n.children[e.Key]
		if e.Key == "_id" && child == nil {
			out = append(out, e)
			continue
		}
		if child == nil {
			continue
		}
		if child.leaf {
			out = append(out, e)
			continue
		}
		switch v := e.Value.(type) {
		case bson.D:
			out = append(out, bson.E{Key: e.Key, Value: includeDoc(dropKey(v, "_id"), child)})
		case bson.A:
			arr := bson.A{}
			for _, x := range v {
				if d, ok := x.(bson.D); ok {
					arr = append(arr, includeDoc(dropKey(d, "_id"), child))
				}
			}
			out = append(out, bson.E{Key: e.Key, Value: arr})
		}
	}
	return out
}

func excludeDoc(doc bson.D, n *projNode) bson.D {
	out := bson.D{}
	for _, e := range doc {
		child := n.children[e.Key]
		if child == nil {
			out = append(out, e)
			continue
		}
		if child.leaf {
			continue
		}
		switch v := e.Value.(type) {
		case bson.D:
			out = append(out, bson.E{Key: e.Key, Value: excludeDoc(v, child)})
		case bson.A:
			arr := bson.A{}
			for _, x := range v {
				if d, ok := x.(bson.D); ok {
					arr = append(arr, excludeDoc(d, child))
				} else {
					arr = append(arr, x)
				}
			}
			out = append(out, bson.E{Key: e.Key, Value: arr})
		default:
			out = append(out, e)
		}
	}
	return out
}

func dropKey(d bson.D, k string) bson.D {
	out := make(bson.D, 0, len(d))
	for _, e := range d {
		if e.Key != k {
			out = append(out, e)
		}
	}
	return out
}

func hasKey(d bson.D, k string) bool {
	for _, e := range d {
		if e.Key == k {
			return true
		}
	}
	return false
}
