package mongoproxy

import (
	"bufio"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// A replica set made of shims. MongoDB cannot be installed here, and
// FerretDB has no replica sets, so each member is a small wire-level shim
// in front of its own real FerretDB: it plays exactly the parts of a
// replica-set member that MongoDB's published specifications describe and
// that the proxy depends on, and passes everything else through to its
// FerretDB untouched:
//
//   - hello/isMaster (SDAM spec, "hello or legacy hello response"): the
//     FerretDB reply (its authentication, wire versions, limits, session
//     timeout) with setName, hosts (every member), primary, me,
//     isWritablePrimary/ismaster and secondary for the member's role,
//     setVersion and an electionId that grows with each election. No
//     topologyVersion: drivers poll.
//   - Writes on a member that is not primary: error 10107
//     NotWritablePrimary with the RetryableWriteError label, as MongoDB
//     4.4+ answers (retryable-writes spec, "determining retryable
//     errors"). A write may be held (hold) so that a test can step the
//     primary down while it is in flight; it is then answered by the role
//     the member has when it is released.
//   - Reads on a secondary without a $readPreference other than primary:
//     error 13435 NotPrimaryNoSecondaryOk, as MongoDB answers (OP_MSG
//     commands carry the read preference; server selection spec).
//
// The members share no data (there is no replication between the
// FerretDBs): a test sees which member a write or read reached by looking
// at each FerretDB directly.
type rsSet struct {
	name    string
	members []*rsShim

	mu      sync.Mutex
	primary int // member index; -1: none
	term    int // elections so far (the electionId)
}

type rsShim struct {
	set     *rsSet
	idx     int
	ln      net.Listener
	addr    string
	backend string // FerretDB's mongodb:// URI
	reads   atomic.Int64
	refused atomic.Int64 // writes answered 10107 (not primary)

	mu   sync.Mutex
	hold chan struct{} // non-nil: writes wait until it is closed
	held chan struct{} // receives one value per held write
}

// newRSSet starts n shims, member i over the shared FerretDB instance
// dbs[i], with member 0 primary.
func newRSSet(t testing.TB, name string, dbs ...int) *rsSet {
	t.Helper()
	s := &rsSet{name: name}
	for i, db := range dbs {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		m := &rsShim{set: s, idx: i, ln: ln, addr: ln.Addr().String(), backend: upstream(t, db)}
		s.members = append(s.members, m)
	}
	var wg sync.WaitGroup
	for _, m := range s.members {
		wg.Add(1)
		go func() { defer wg.Done(); m.serve(&wg) }()
	}
	t.Cleanup(func() {
		for _, m := range s.members {
			_ = m.ln.Close()
			m.release()
		}
		wg.Wait()
	})
	s.elect(0)
	return s
}

// uri is a URI naming every member and the set, as an operator would
// write it (with a short heartbeat so tests see elections quickly).
func (s *rsSet) uri() string {
	var hosts []string
	for _, m := range s.members {
		hosts = append(hosts, m.addr)
	}
	return "mongodb://" + strings.Join(hosts, ",") + "/?replicaSet=" + s.name + "&heartbeatFrequencyMS=500"
}

// elect makes member i primary (-1: none), as an election would.
func (s *rsSet) elect(i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.primary = i
	s.term++
}

func (s *rsSet) role(i int) (primary bool, primaryAddr string, term int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.primary >= 0 {
		primaryAddr = s.members[s.primary].addr
	}
	return s.primary == i, primaryAddr, s.term
}

// holdWrites makes the member's writes wait (each announced on the
// returned channel) until release.
func (m *rsShim) holdWrites() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hold, m.held = make(chan struct{}), make(chan struct{}, 16)
	return m.held
}

func (m *rsShim) release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.hold != nil {
		close(m.hold)
		m.hold = nil
	}
}

func (m *rsShim) serve(wg *sync.WaitGroup) {
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	defer func() {
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	}()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { mu.Lock(); delete(conns, c); mu.Unlock(); _ = c.Close() }()
			m.conn(c)
		}()
	}
}

var shimWrites = map[string]bool{"insert": true, "update": true, "delete": true, "findandmodify": true,
	"create": true, "createindexes": true, "drop": true, "dropindexes": true, "dropdatabase": true}

var shimReads = map[string]bool{"find": true, "aggregate": true, "count": true, "distinct": true, "getmore": true}

// conn relays one client connection to a connection of its own to the
// member's FerretDB, playing the member's part on the way.
func (m *rsShim) conn(c net.Conn) {
	cs, err := connstring.Parse(m.backend)
	if err != nil {
		return
	}
	network := "tcp"
	if strings.HasSuffix(cs.Hosts[0], ".sock") {
		network = "unix"
	}
	b, err := net.Dial(network, cs.Hosts[0])
	if err != nil {
		return
	}
	defer b.Close()
	cr, br := bufio.NewReader(c), bufio.NewReader(b)
	for {
		msg, err := wire.ReadMessage(cr, nil, 64<<20)
		if err != nil {
			return
		}
		h, _ := wire.ParseHeader(msg)
		name, body := "", bson.Raw(nil)
		switch h.OpCode {
		case wire.OpMsg:
			if pm, err := wire.ParseMsg(msg); err == nil {
				body = bson.Raw(pm.Body)
			}
		case wire.OpQuery:
			if q, err := wire.ParseQuery(msg); err == nil {
				body = bson.Raw(q.Query)
			}
		}
		if body != nil {
			if e, err := body.IndexErr(0); err == nil {
				name = strings.ToLower(e.Key())
			}
		}
		var answer bson.Raw
		switch {
		case shimWrites[name]:
			m.mu.Lock()
			hold, held := m.hold, m.held
			m.mu.Unlock()
			if hold != nil {
				held <- struct{}{}
				<-hold
			}
			if primary, _, _ := m.set.role(m.idx); !primary {
				m.refused.Add(1)
				answer = shimError(10107, "NotWritablePrimary", "not primary", "RetryableWriteError")
			}
		case shimReads[name]:
			// getMore carries no read preference: its cursor exists.
			if primary, _, _ := m.set.role(m.idx); !primary && name != "getmore" && !secondaryOK(body) {
				answer = shimError(13435, "NotPrimaryNoSecondaryOk", "not primary and secondaryOk=false")
			} else {
				m.reads.Add(1)
			}
		}
		if answer == nil {
			if _, err := b.Write(msg); err != nil {
				return
			}
			reply, err := wire.ReadMessage(br, nil, 64<<20)
			if err != nil {
				return
			}
			if name == "hello" || name == "ismaster" || name == "$query" {
				reply = m.helloReply(reply, name == "hello")
			}
			if _, err := c.Write(reply); err != nil {
				return
			}
			continue
		}
		var out []byte
		if h.OpCode == wire.OpQuery {
			out = wire.AppendReply(nil, &wire.Reply{Header: wire.Header{ResponseTo: h.RequestID}, Documents: [][]byte{answer}})
		} else {
			out = wire.AppendMsg(nil, 0, h.RequestID, 0, answer)
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// secondaryOK reports whether a command's $readPreference lets a
// secondary serve it.
func secondaryOK(body bson.Raw) bool {
	mode, ok := body.Lookup("$readPreference", "mode").StringValueOK()
	return ok && mode != "primary"
}

func shimError(code int32, name, msg string, labels ...string) bson.Raw {
	d := bson.D{{Key: "ok", Value: 0.0}, {Key: "errmsg", Value: msg}, {Key: "code", Value: code}, {Key: "codeName", Value: name}}
	if len(labels) > 0 {
		d = append(d, bson.E{Key: "errorLabels", Value: labels})
	}
	b, _ := bson.Marshal(d)
	return b
}

// helloReply rewrites FerretDB's hello reply as this member's.
func (m *rsShim) helloReply(reply []byte, hello bool) []byte {
	body := replyBody(reply)
	if body == nil {
		return reply
	}
	primary, primaryAddr, term := m.set.role(m.idx)
	var hosts bson.A
	for _, o := range m.set.members {
		hosts = append(hosts, o.addr)
	}
	idx, b := bsoncore.AppendDocumentStart(nil)
	elems, _ := body.Elements()
	for _, e := range elems {
		switch e.Key() {
		case "ismaster", "isWritablePrimary", "secondary", "ok":
			continue
		}
		b = append(b, e...)
	}
	doc := bson.D{{Key: "setName", Value: m.set.name}, {Key: "hosts", Value: hosts}, {Key: "me", Value: m.addr},
		{Key: "secondary", Value: !primary}, {Key: "setVersion", Value: int32(1)}}
	if hello {
		doc = append(doc, bson.E{Key: "isWritablePrimary", Value: primary})
	} else {
		doc = append(doc, bson.E{Key: "ismaster", Value: primary})
	}
	if primaryAddr != "" {
		doc = append(doc, bson.E{Key: "primary", Value: primaryAddr})
	}
	if primary {
		var oid bson.ObjectID
		oid[0] = 0x7f
		oid[11] = byte(term)
		doc = append(doc, bson.E{Key: "electionId", Value: oid})
	}
	doc = append(doc, bson.E{Key: "ok", Value: 1.0})
	extra, _ := bson.Marshal(doc)
	xe, _ := bson.Raw(extra).Elements()
	for _, e := range xe {
		b = append(b, e...)
	}
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	out, err := rewriteReply(reply, b)
	if err != nil {
		return reply
	}
	return out
}

// waitPrimary waits until the proxy's driver sees member i as primary.
func waitProxyPrimary(t testing.TB, p *Proxy, addr string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if got, err := p.up.Primary(); err == nil && got == addr {
			return
		}
		if time.Now().After(deadline) {
			got, err := p.up.Primary()
			t.Fatalf("the proxy's primary is %q (%v), want %s", got, err, addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
