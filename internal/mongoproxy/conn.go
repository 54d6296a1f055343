package mongoproxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// Connection states. A connection is idle while it waits for the client's
// next message (Shutdown may close it then) and busy while it handles one
// (Shutdown lets it finish).
const (
	connIdle = iota
	connBusy
	connClosed
)

// upstreamMaxMessage bounds replies from the database (a 48 MB message plus
// slack); the database is trusted more than clients, but not unboundedly.
const upstreamMaxMessage = 64 << 20

// readBufSize is the buffered reader size per direction: small, so a
// thousand idle connections stay cheap.
const readBufSize = 4096

// clientConn is one client connection and its own upstream connection.
type clientConn struct {
	p  *Proxy
	c  net.Conn
	id uint64

	mu    sync.Mutex
	state int
	up    net.Conn

	cr, ur    *bufio.Reader
	buf, ubuf []byte

	// authenticated: the database accepted an authentication on this
	// connection (see Proxy.authRequired).
	authenticated bool
	// internal: the node's own client (Proxy.DialInternal), the only one
	// allowed into the reserved namespaces.
	internal bool
}

// lastReplyOK inspects the last reply relayed (still in ubuf) for a
// completed authentication.
func (c *clientConn) lastReplyOK(cmd string) bool {
	m, err := wire.ParseMsg(c.ubuf)
	if err != nil {
		return false
	}
	return authSucceeded(cmd, bson.Raw(m.Body))
}

// badMessage is a client protocol violation: the connection is closed.
type badMessage struct{ err error }

func (b *badMessage) Error() string { return "malformed or unsupported message: " + b.err.Error() }

// setState moves to idle or busy; false if the connection was closed.
func (c *clientConn) setState(s int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == connClosed {
		return false
	}
	if s == connIdle && c.p.isClosing() {
		c.closeLocked()
		return false
	}
	c.state = s
	return true
}

func (p *Proxy) isClosing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}

func (c *clientConn) closeIfIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == connIdle {
		c.closeLocked()
	}
}

func (c *clientConn) forceClose() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked()
}

func (c *clientConn) closeLocked() {
	if c.state == connClosed {
		return
	}
	c.state = connClosed
	_ = c.c.Close()
	if c.up != nil {
		_ = c.up.Close()
	}
}

func (c *clientConn) serve() {
	defer c.p.removeConn(c)
	defer c.forceClose()
	log := c.p.log.With("conn", c.id, "client", c.c.RemoteAddr().String())
	up, err := net.DialTimeout(c.p.dialNet, c.p.dialAddr, 10*time.Second)
	if err != nil {
		log.Warn("cannot reach the upstream database; closing client connection", "upstream", c.p.dialAddr, "err", err)
		return
	}
	c.mu.Lock()
	if c.state == connClosed {
		c.mu.Unlock()
		_ = up.Close()
		return
	}
	c.up = up
	c.mu.Unlock()
	c.cr = bufio.NewReaderSize(c.c, readBufSize)
	c.ur = bufio.NewReaderSize(up, readBufSize)
	for {
		if !c.setState(connIdle) {
			return
		}
		msg, err := wire.ReadMessage(c.cr, c.buf[:0], c.p.opts.MaxMessageSize)
		if err != nil {
			if quietClose(err) {
				return
			}
			if strings.HasPrefix(err.Error(), "wire:") {
				err = &badMessage{err}
			} else {
				log.Debug("client read failed", "err", err)
				return
			}
		}
		if err == nil {
			if !c.setState(connBusy) {
				return
			}
			c.buf = msg
			err = c.handle(msg)
		}
		if err != nil {
			var bm *badMessage
			if errors.As(err, &bm) {
				c.p.met.badMessages.Inc()
				log.Warn("closing client connection", "err", err)
			} else if !quietClose(err) {
				log.Info("closing client connection", "err", err)
			}
			return
		}
		if cap(c.buf) > 1<<20 {
			c.buf = nil // do not keep a large buffer on an idle connection
		}
		if cap(c.ubuf) > 1<<20 {
			c.ubuf = nil
		}
	}
}

func quietClose(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (c *clientConn) handle(msg []byte) error {
	h, err := wire.ParseHeader(msg)
	if err != nil {
		return &badMessage{err}
	}
	switch h.OpCode {
	case wire.OpMsg:
		return c.handleMsg(h, msg)
	case wire.OpQuery:
		return c.handleQuery(h, msg)
	case wire.OpCompressed:
		return &badMessage{wire.ErrCompressed}
	default:
		// Legacy OP_INSERT/OP_UPDATE/OP_DELETE would bypass capture, and
		// MongoDB 6 removed them all.
		return &badMessage{fmt.Errorf("op code %d is not supported", h.OpCode)}
	}
}

// replyFilter says how to rewrite replies on their way back.
type replyFilter struct {
	hideMetaDB bool // listDatabases: drop edgenode_meta
	// onReply, when set, sees the first reply's body before the client does
	// (DDL is logged before the client learns it succeeded).
	onReply func(body bson.Raw)
}

func (c *clientConn) handleMsg(h wire.Header, msg []byte) error {
	m, err := wire.ParseMsg(msg)
	if err != nil {
		return &badMessage{err}
	}
	cmd, err := parseCommand(m)
	if err != nil {
		return &badMessage{err}
	}
	d := c.p.dispatch(c.p.baseCtx, cmd, c.authenticated)
	switch {
	case d.reply != nil:
		if m.MoreToCome() {
			return nil // unacknowledged write: no reply
		}
		out := wire.AppendMsg(nil, c.p.nextRequestID(), h.RequestID, 0, d.reply)
		_, err := c.c.Write(out)
		return err
	case d.rewrite != nil:
		msg = wire.AppendMsg(nil, h.RequestID, h.ResponseTo, m.Flags, d.rewrite, m.Sequences...)
	}
	f := d.filter
	called := false
	if d.after != nil {
		f.onReply = func(body bson.Raw) { called = true; d.after(body) }
	}
	err = c.forward(msg, !m.MoreToCome(), f)
	if d.after != nil && !called {
		d.after(nil)
	}
	switch d.auth {
	case authWatch:
		if err == nil && c.lastReplyOK(strings.ToLower(cmd.name)) {
			c.authenticated = true
		}
	case authReset:
		c.authenticated = false
	}
	if d.purgeAfter {
		c.p.eng.purgeCache()
	}
	return err
}

// opQueryAllowed are the commands still accepted over legacy OP_QUERY: the
// handshake and authentication, as in MongoDB 6+. Anything else could be a
// write that bypasses capture.
var opQueryAllowed = map[string]bool{
	"hello": true, "ismaster": true, "buildinfo": true, "ping": true, "getnonce": true,
	"saslstart": true, "saslcontinue": true, "authenticate": true, "whatsmyuri": true,
}

func (c *clientConn) handleQuery(h wire.Header, msg []byte) error {
	q, err := wire.ParseQuery(msg)
	if err != nil {
		return &badMessage{err}
	}
	cmd := bson.Raw(q.Query)
	wrapped := false
	if first, err := cmd.IndexErr(0); err == nil && (first.Key() == "$query" || first.Key() == "query") && first.Value().Type == bson.TypeEmbeddedDocument {
		cmd, wrapped = bson.Raw(first.Value().Value), true
	}
	name := ""
	if first, err := cmd.IndexErr(0); err == nil {
		name = strings.ToLower(first.Key())
	}
	if !strings.HasSuffix(q.FullCollectionName, ".$cmd") || !opQueryAllowed[name] {
		e := errorf(codeUnsupportedOpQuery, "Unsupported OP_QUERY command: %s. The client driver may require an upgrade.", name)
		out := wire.AppendReply(nil, &wire.Reply{Header: wire.Header{RequestID: c.p.nextRequestID(), ResponseTo: h.RequestID}, Documents: [][]byte{errorReply(e)}})
		_, err := c.c.Write(out)
		return err
	}
	if name == "hello" || name == "ismaster" {
		if stripped, changed := removeTopLevel(cmd, "compression"); changed {
			if wrapped {
				stripped = replaceTopLevel(bson.Raw(q.Query), bson.Raw(q.Query).Index(0).Key(), stripped)
			}
			q.Query = stripped
			msg = wire.AppendQuery(nil, q)
		}
	}
	if err := c.forward(msg, true, replyFilter{}); err != nil {
		return err
	}
	// Drivers send their first hello, with speculativeAuthenticate, over
	// OP_QUERY: track authentication here too.
	if r, err := wire.ParseReply(c.ubuf); err == nil && len(r.Documents) == 1 && authSucceeded(name, bson.Raw(r.Documents[0])) {
		c.authenticated = true
	}
	return nil
}

// forward sends msg upstream and relays the replies: one, or a stream while
// the server sets moreToCome (exhaust cursors, streaming hello).
func (c *clientConn) forward(msg []byte, expectReply bool, f replyFilter) error {
	if _, err := c.up.Write(msg); err != nil {
		return fmt.Errorf("upstream write: %w", err)
	}
	if !expectReply {
		return nil
	}
	for {
		reply, err := wire.ReadMessage(c.ur, c.ubuf[:0], upstreamMaxMessage)
		if err != nil {
			return fmt.Errorf("upstream read: %w", err)
		}
		c.ubuf = reply
		if f.onReply != nil {
			var body bson.Raw
			if rm, perr := wire.ParseMsg(reply); perr == nil {
				body = bson.Raw(rm.Body)
			}
			f.onReply(body)
			f.onReply = nil
		}
		out, more, err := filterReply(reply, f)
		if err != nil {
			return fmt.Errorf("upstream reply: %w", err)
		}
		if _, err := c.c.Write(out); err != nil {
			return err
		}
		if !more {
			return nil
		}
	}
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
		if !f.hideMetaDB && !bytes.Contains(reply, metaFieldBytes) {
			return reply, more, nil
		}
		m, err := wire.ParseMsg(reply)
		if err != nil {
			return nil, false, err
		}
		body, changed := wire.StripField(m.Body, crdt.MetaField)
		if f.hideMetaDB {
			if b, ok := hideDatabase(body, metaDB); ok {
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
