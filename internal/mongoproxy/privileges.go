package mongoproxy

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// Privilege actions (MongoDB's names) the proxy checks before it performs a
// write with its own credentials.
const (
	actFind             = "find"
	actInsert           = "insert"
	actUpdate           = "update"
	actRemove           = "remove"
	actCreateCollection = "createCollection"
	actCreateIndex      = "createIndex"
	actDropCollection   = "dropCollection"
	actDropIndex        = "dropIndex"
	actDropDatabase     = "dropDatabase"
	actAny              = "anyAction"
)

// privileges is what the database says the client's authenticated user may
// do: the authInfo.authenticatedUserPrivileges of connectionStatus
// {showPrivileges: true}.
type privileges struct {
	// unrestricted: the reply has no authenticatedUserPrivileges at all, the
	// sign of a server without a role model (FerretDB), where every
	// authenticated user may do everything.
	unrestricted bool
	list         []privilege
	// users is the reply's authInfo.authenticatedUsers as the database
	// encodes it (nil if absent): who the client is, for the retry
	// records, which belong to a session of that user only.
	users []byte
}

// privilege is one entry: a resource pattern and its actions.
type privilege struct {
	anyResource bool // {anyResource: true}
	cluster     bool // {cluster: true}: no namespace
	db, coll    string
	actions     map[string]bool
}

// parseConnectionStatus reads the privileges out of a connectionStatus
// reply.
func parseConnectionStatus(reply bson.Raw) (*privileges, error) {
	if err := reply.Validate(); err != nil {
		return nil, fmt.Errorf("connectionStatus reply: %w", err)
	}
	if ok, _ := reply.Lookup("ok").AsFloat64OK(); ok != 1 {
		msg, _ := reply.Lookup("errmsg").StringValueOK()
		return nil, fmt.Errorf("connectionStatus failed: %s", msg)
	}
	ai, err := reply.LookupErr("authInfo")
	if err != nil || ai.Type != bson.TypeEmbeddedDocument {
		return nil, errors.New("connectionStatus reply has no authInfo document")
	}
	var users []byte
	if u, err := bson.Raw(ai.Value).LookupErr("authenticatedUsers"); err == nil {
		users = bytes.Clone(u.Value)
	}
	pv, err := bson.Raw(ai.Value).LookupErr("authenticatedUserPrivileges")
	if err != nil {
		return &privileges{unrestricted: true, users: users}, nil
	}
	if pv.Type != bson.TypeArray {
		return nil, fmt.Errorf("authenticatedUserPrivileges is a %s, not an array", pv.Type)
	}
	vals, err := bson.Raw(pv.Value).Values()
	if err != nil {
		return nil, fmt.Errorf("authenticatedUserPrivileges: %w", err)
	}
	ps := &privileges{users: users}
	for i, v := range vals {
		if v.Type != bson.TypeEmbeddedDocument {
			return nil, fmt.Errorf("authenticatedUserPrivileges.%d is a %s, not a document", i, v.Type)
		}
		p, err := parsePrivilege(bson.Raw(v.Value))
		if err != nil {
			return nil, fmt.Errorf("authenticatedUserPrivileges.%d: %w", i, err)
		}
		ps.list = append(ps.list, p)
	}
	return ps, nil
}

func parsePrivilege(d bson.Raw) (privilege, error) {
	var p privilege
	rv, err := d.LookupErr("resource")
	if err != nil || rv.Type != bson.TypeEmbeddedDocument {
		return p, errors.New("no resource document")
	}
	res := bson.Raw(rv.Value)
	switch {
	case boolField(res, "anyResource", false):
		p.anyResource = true
	case boolField(res, "cluster", false):
		p.cluster = true
	default:
		db, okDB := res.Lookup("db").StringValueOK()
		coll, okColl := res.Lookup("collection").StringValueOK()
		if !okDB || !okColl {
			// Patterns this proxy does not know (system_buckets, ...)
			// grant nothing here.
			p.cluster = true
			break
		}
		p.db, p.coll = db, coll
	}
	av, err := d.LookupErr("actions")
	if err != nil || av.Type != bson.TypeArray {
		return p, errors.New("no actions array")
	}
	vals, err := bson.Raw(av.Value).Values()
	if err != nil {
		return p, fmt.Errorf("actions: %w", err)
	}
	p.actions = make(map[string]bool, len(vals))
	for _, a := range vals {
		if s, ok := a.StringValueOK(); ok {
			p.actions[s] = true
		}
	}
	return p, nil
}

// matches reports whether the privilege's resource covers db.coll, or the
// database db itself when coll is "" (MongoDB's resource patterns:
// {db: "", collection: ""} is every database and every collection but the
// system ones, {db: d, collection: ""} database d and its collections but
// the system ones, {db: "", collection: c} collection c in every database,
// {db: d, collection: c} exactly d.c).
func (p *privilege) matches(db, coll string) bool {
	switch {
	case p.anyResource:
		return true
	case p.cluster:
		return false
	}
	if coll == "" {
		return p.coll == "" && (p.db == "" || p.db == db)
	}
	if p.coll != "" {
		return p.coll == coll && (p.db == "" || p.db == db)
	}
	return !strings.HasPrefix(coll, "system.") && (p.db == "" || p.db == db)
}

// allows reports whether some privilege grants action on db.coll (coll ""
// for the database).
func (ps *privileges) allows(action, db, coll string) bool {
	if ps.unrestricted {
		return true
	}
	for i := range ps.list {
		p := &ps.list[i]
		if (p.actions[action] || p.actions[actAny]) && p.matches(db, coll) {
			return true
		}
	}
	return false
}

// privilegeQueryTimeout bounds the proxy's own question to the database.
const privilegeQueryTimeout = 30 * time.Second

// privileges returns the client's privileges, asking the database the
// first time (cached until the next authentication command or logout). The
// question goes over the client's own upstream connection, so the answer is
// about the client's identity, with a request id of the proxy's; exactly its
// reply is read and never relayed. Nothing of the client's is in flight
// there: every forwarded message's reply is read before the next client
// message is taken (see forward), and the command being decided has not
// been sent. An error is a broken upstream connection (the client's
// connection must close); a database that cannot answer is a *mongoError.
func (c *clientConn) privileges() (*privileges, *mongoError, error) {
	if c.privs != nil {
		return c.privs, nil, nil
	}
	id := c.p.nextRequestID()
	body, _ := bson.Marshal(bson.D{{Key: "connectionStatus", Value: 1}, {Key: "showPrivileges", Value: true}, {Key: "$db", Value: "admin"}})
	_ = c.up.SetDeadline(time.Now().Add(privilegeQueryTimeout))
	defer func() { _ = c.up.SetDeadline(time.Time{}) }()
	if _, err := c.up.Write(wire.AppendMsg(nil, id, 0, 0, body)); err != nil {
		return nil, nil, fmt.Errorf("upstream write (privileges): %w", err)
	}
	reply, err := wire.ReadMessage(c.ur, nil, upstreamMaxMessage)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream read (privileges): %w", err)
	}
	m, err := wire.ParseMsg(reply)
	if err != nil {
		return nil, nil, fmt.Errorf("upstream reply (privileges): %w", err)
	}
	if m.Header.ResponseTo != id || m.MoreToCome() {
		return nil, nil, fmt.Errorf("upstream reply (privileges) answers request %d, not %d", m.Header.ResponseTo, id)
	}
	ps, err := parseConnectionStatus(bson.Raw(m.Body))
	if err != nil {
		return nil, errorf(codeUnauthorized, "edgenode: cannot determine the client's privileges: %v", err), nil
	}
	if ps.unrestricted {
		c.p.noRoles.Do(func() {
			c.p.log.Info("the database reports no privileges for its users (no role model, as in FerretDB): every authenticated client may write through the proxy")
		})
	}
	c.privs = ps
	return ps, nil, nil
}

// authorize decides whether the proxy may perform, with its own
// credentials, what the client asked for with command name: every action
// on db.coll (coll "" for the database). Internal connections may do
// anything; without credentials upstream nobody's privileges are checked.
// A non-nil error means the connection must close.
func (c *clientConn) authorize(name, db, coll string, actions ...string) (*mongoError, error) {
	if c.internal || !c.p.authRequired {
		return nil, nil
	}
	if !c.authenticated {
		// The proxy writes with its own credentials: it must not do so
		// for a connection the database has not authenticated.
		return errorf(codeUnauthorized, "command %s requires authentication", name), nil
	}
	ps, merr, err := c.privileges()
	if merr != nil || err != nil {
		return merr, err
	}
	ns := db
	if coll != "" {
		ns = db + "." + coll
	}
	for _, a := range actions {
		if !ps.allows(a, db, coll) {
			return errorf(codeUnauthorized, "not authorized on %s to execute command %s: the authenticated user has no privilege for the action %s on %s", db, name, a, ns), nil
		}
	}
	return nil, nil
}
