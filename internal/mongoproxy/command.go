package mongoproxy

import (
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// The envelope of every OP_MSG command (command), and the field readers
// the parse stage uses. A captured write is decoded further, once, into a
// typed value (writes.go).

// command is the parsed envelope of an OP_MSG command: its name (first key),
// target database, the collection when the command's value names one, and
// the document sequences that carried bulk arguments.
type command struct {
	name string
	db   string
	coll string
	body bson.Raw
	seqs []wire.Sequence
}

func parseCommand(m *wire.Msg) (*command, error) {
	body := bson.Raw(m.Body)
	first, err := body.IndexErr(0)
	if err != nil {
		return nil, fmt.Errorf("empty command document")
	}
	c := &command{name: first.Key(), body: body, seqs: m.Sequences}
	if v := first.Value(); v.Type == bson.TypeString {
		c.coll = v.StringValue()
	}
	if v, err := body.LookupErr("$db"); err == nil && v.Type == bson.TypeString {
		c.db = v.StringValue()
	}
	return c, nil
}

func (c *command) ns() string { return c.db + "." + c.coll }

// array returns the documents of a bulk argument, from the body (an array)
// or from a document sequence of that name (drivers use the latter).
func (c *command) array(name string) ([]bson.Raw, *mongoError) {
	var out []bson.Raw
	for _, s := range c.seqs {
		if s.Identifier == name {
			for _, d := range s.Docs {
				out = append(out, bson.Raw(d))
			}
		}
	}
	v, err := c.body.LookupErr(name)
	if err != nil {
		return out, nil
	}
	if out != nil {
		return nil, errorf(codeFailedToParse, "%s is given both in the body and as a document sequence", name)
	}
	if v.Type != bson.TypeArray {
		return nil, errorf(codeTypeMismatch, "%s must be an array, got %s", name, v.Type)
	}
	vals, err := bson.Raw(v.Value).Values()
	if err != nil {
		return nil, errorf(codeFailedToParse, "%s: %v", name, err)
	}
	for i, e := range vals {
		if e.Type != bson.TypeEmbeddedDocument {
			return nil, errorf(codeTypeMismatch, "%s.%d must be a document, got %s", name, i, e.Type)
		}
		out = append(out, bson.Raw(e.Value))
	}
	return out, nil
}

func boolField(d bson.Raw, key string, def bool) bool {
	v, err := d.LookupErr(key)
	if err != nil {
		return def
	}
	switch v.Type {
	case bson.TypeBoolean:
		return v.Boolean()
	case bson.TypeInt32:
		return v.Int32() != 0
	case bson.TypeInt64:
		return v.Int64() != 0
	case bson.TypeDouble:
		return v.Double() != 0
	}
	return def
}

func docField(d bson.Raw, key string) (bson.Raw, *mongoError) {
	v, err := d.LookupErr(key)
	if err != nil || v.Type == bson.TypeNull {
		return nil, nil
	}
	if v.Type != bson.TypeEmbeddedDocument {
		return nil, errorf(codeTypeMismatch, "%s must be a document, got %s", key, v.Type)
	}
	return bson.Raw(v.Value), nil
}

// transactional reports whether a command belongs to a multi-document
// transaction (startTransaction or autocommit:false).
func transactional(body bson.Raw) bool {
	if boolField(body, "startTransaction", false) {
		return true
	}
	if v, err := body.LookupErr("autocommit"); err == nil && v.Type == bson.TypeBoolean && !v.Boolean() {
		return true
	}
	return false
}

func rawValue(v any) bson.RawValue {
	t, b, err := bson.MarshalValue(v)
	if err != nil {
		panic(err)
	}
	return bson.RawValue{Type: t, Value: b}
}
