package mongoproxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

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
	// upAddr is the member up is connected to: the primary when it was
	// dialed. Once another member is primary the connection is closed
	// as soon as it is idle (setState).
	upAddr string

	cr, ur    *bufio.Reader
	buf, ubuf []byte

	// authenticated: the database accepted an authentication on this
	// connection (see Proxy.authRequired), judged by the reply to the
	// authentication command itself.
	authenticated bool
	// privs caches what the client's user may do (see privileges); nil
	// until asked, dropped by every authentication command and logout.
	privs *privileges
	// secCursors are the cursors this connection opened on an upstream
	// secondary, and their member (reads.go).
	secCursors map[int64]string
	// internal: the node's own client (Proxy.DialInternal), the only one
	// allowed into the reserved namespaces, with every privilege, and
	// exempt from the idle timeout.
	internal bool
}

// badMessage is a client protocol violation: the connection is closed.
type badMessage struct{ err error }

func (b *badMessage) Error() string { return "malformed or unsupported message: " + b.err.Error() }

// timedOut is a client too slow for the timeouts: the connection is closed.
type timedOut struct {
	reason string // metric label: idle, message, reply
	msg    string
}

func (t *timedOut) Error() string { return t.msg }

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// readMessage waits for the client's next message: its first byte for as
// long as the idle timeout allows (internal connections wait forever), the
// rest within the message timeout.
func (c *clientConn) readMessage() ([]byte, error) {
	var idle time.Time
	if t := c.p.opts.IdleTimeout; t > 0 && !c.internal {
		idle = time.Now().Add(t)
	}
	_ = c.c.SetReadDeadline(idle)
	if _, err := c.cr.Peek(1); err != nil {
		if isTimeout(err) {
			return nil, &timedOut{reason: "idle", msg: fmt.Sprintf("no message for %v (idle timeout)", c.p.opts.IdleTimeout)}
		}
		return nil, err
	}
	_ = c.c.SetReadDeadline(time.Now().Add(c.p.opts.MessageTimeout))
	msg, err := wire.ReadMessage(c.cr, c.buf[:0], c.p.opts.MaxMessageSize)
	if err != nil && isTimeout(err) {
		return nil, &timedOut{reason: "message", msg: fmt.Sprintf("message not received in full within %v (message timeout): %v", c.p.opts.MessageTimeout, err)}
	}
	return msg, err
}

// writeClient sends b to the client, which must take it within the message
// timeout.
func (c *clientConn) writeClient(b []byte) error {
	_ = c.c.SetWriteDeadline(time.Now().Add(c.p.opts.MessageTimeout))
	_, err := c.c.Write(b)
	if err != nil && isTimeout(err) {
		return &timedOut{reason: "reply", msg: fmt.Sprintf("the client did not take a %d-byte reply within %v (message timeout)", len(b), c.p.opts.MessageTimeout)}
	}
	return err
}

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
	// Between two messages (after a reply, or before the next message is
	// handled), a connection whose upstream stopped being the primary
	// closes.
	if c.staleLocked() {
		return false
	}
	c.state = s
	return true
}

func (p *Proxy) isClosing() bool { return p.closing.Load() }

func (c *clientConn) closeIfIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == connIdle {
		c.closeLocked()
	}
}

// staleLocked closes the connection, and reports true, when its upstream
// is no longer the primary. Its client authenticated on that upstream
// socket, which cannot be moved to another member (SCRAM cannot be
// replayed); a driver that finds its connection closed opens another,
// which reaches the new primary, and retries a retryable operation there.
func (c *clientConn) staleLocked() bool {
	if c.upAddr == "" || !c.p.up.isStale(c.upAddr) {
		return false
	}
	c.p.log.Info("closing client connection: its upstream is no longer the primary", "conn", c.id, "upstream", c.upAddr)
	c.p.met.connsMoved.Inc()
	c.closeLocked()
	return true
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
	// During an election there is no primary for a while: wait a little
	// for one rather than fail the driver's handshake at once.
	addr, err := c.p.up.waitPrimary(c.p.baseCtx, min(10*time.Second, c.p.opts.MessageTimeout))
	var up net.Conn
	if err == nil {
		up, err = c.p.up.dial(c.p.baseCtx, addr)
		if err != nil {
			err = fmt.Errorf("edgenode: cannot reach the upstream primary %s: %w", addr, err)
		}
	}
	if err != nil {
		log.Warn("no upstream connection; answering the client's first message with the error and closing", "err", err)
		c.refuseFirst(err)
		return
	}
	c.mu.Lock()
	if c.state == connClosed {
		c.mu.Unlock()
		_ = up.Close()
		return
	}
	c.up, c.upAddr = up, addr
	c.mu.Unlock()
	c.cr = bufio.NewReaderSize(c.c, readBufSize)
	c.ur = bufio.NewReaderSize(up, readBufSize)
	for {
		if !c.setState(connIdle) {
			return
		}
		msg, err := c.readMessage()
		if err != nil {
			var to *timedOut
			switch {
			case errors.As(err, &to):
			case quietClose(err):
				return
			case strings.HasPrefix(err.Error(), "wire:"):
				err = &badMessage{err}
			default:
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
			var to *timedOut
			switch {
			case errors.As(err, &bm):
				c.p.met.badMessages.Inc()
				log.Warn("closing client connection", "err", err)
			case errors.As(err, &to):
				c.p.met.timeouts.WithLabelValues(to.reason).Inc()
				log.Info("closing client connection", "err", err)
			case !quietClose(err):
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

// refuseFirst answers the client's first message with err (the connection
// has no upstream): the driver's handshake then fails with that message,
// rather than with a bare closed connection.
func (c *clientConn) refuseFirst(err error) {
	cr := bufio.NewReaderSize(c.c, readBufSize)
	_ = c.c.SetReadDeadline(time.Now().Add(c.p.opts.MessageTimeout))
	msg, rerr := wire.ReadMessage(cr, nil, c.p.opts.MaxMessageSize)
	if rerr != nil {
		return
	}
	h, herr := wire.ParseHeader(msg)
	if herr != nil {
		return
	}
	body := errorReply(errorf(codeFailedToSatisfyReadPreference, "%v", err))
	switch h.OpCode {
	case wire.OpMsg:
		_ = c.writeClient(wire.AppendMsg(nil, c.p.nextRequestID(), h.RequestID, 0, body))
	case wire.OpQuery:
		_ = c.writeClient(wire.AppendReply(nil, &wire.Reply{Header: wire.Header{RequestID: c.p.nextRequestID(), ResponseTo: h.RequestID}, Documents: [][]byte{body}}))
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

// authSucceeded reports whether an authentication reply completed a
// successful conversation: ok:1 with done:true (SASL), ok:1 for the legacy
// authenticate command, or a hello whose speculativeAuthenticate is done.
func authSucceeded(cmd string, reply bson.Raw) bool {
	if ok, _ := reply.Lookup("ok").AsFloat64OK(); ok != 1 {
		return false
	}
	switch cmd {
	case "authenticate":
		return true
	case "hello", "ismaster":
		sa, err := reply.LookupErr("speculativeAuthenticate")
		if err != nil || sa.Type != bson.TypeEmbeddedDocument {
			return false
		}
		reply = bson.Raw(sa.Value)
		if d, err := reply.LookupErr("done"); err != nil {
			// MONGODB-X509 answers with just the user.
			return reply.Lookup("dbname").Type == bson.TypeString
		} else {
			return d.Type == bson.TypeBoolean && d.Boolean()
		}
	default:
		d := reply.Lookup("done")
		return d.Type == bson.TypeBoolean && d.Boolean()
	}
}

// isAuthCommand reports whether a command authenticates the connection:
// saslStart, saslContinue, authenticate, and a handshake carrying
// speculativeAuthenticate.
func isAuthCommand(lower string, body bson.Raw) bool {
	switch lower {
	case "saslstart", "saslcontinue", "authenticate":
		return true
	case "hello", "ismaster":
		_, err := body.LookupErr("speculativeAuthenticate")
		return err == nil
	}
	return false
}

// beginAuth is called before an authentication command (or logout) is
// forwarded: the connection has no identity until the database accepts
// this one (a failed attempt may end the previous one: FerretDB replaces
// it), and the previous identity's privileges are forgotten.
func (c *clientConn) beginAuth() {
	c.authenticated = false
	c.privs = nil
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
	lower := strings.ToLower(cmd.name)
	authCmd := isAuthCommand(lower, cmd.body)
	if authCmd && m.MoreToCome() {
		// MongoDB would run it and answer nothing. But a client sends an
		// authentication step to be answered (it needs the server's reply
		// to go on, and to learn the outcome), and the proxy judges
		// authentication by that reply alone: one sent without it has no
		// legitimate use, and the connection is closed.
		return &badMessage{fmt.Errorf("%s with moreToCome: authentication commands must be answered", cmd.name)}
	}
	if authCmd || lower == "logout" {
		c.beginAuth()
	}
	d := c.p.dispatch(c.p.baseCtx, cmd, lower, c)
	if d.closeErr != nil {
		return d.closeErr
	}
	// A command that may have written moves the write epoch before its
	// reply reaches the client (coalesce.go: reads after it share nothing
	// sent before it).
	mayWrite := !readOnlyCommands[lower]
	if d.reply != nil {
		if mayWrite {
			c.p.flights.wrote()
		}
		if m.MoreToCome() {
			return nil // unacknowledged write: no reply
		}
		return c.writeClient(wire.AppendMsg(nil, c.p.nextRequestID(), h.RequestID, 0, d.reply))
	}
	// A moreToCome message goes upstream without the flag, and its answer
	// is read and dropped: every forwarded message is answered before the
	// next client message is taken. FerretDB answers moreToCome messages
	// anyway, and an answer left unread would be taken for the next
	// command's (an authentication judged by another command's ok:1); the
	// proxy's own privilege question needs the connection quiet, too.
	relay := !m.MoreToCome()
	if d.rewrite != nil || !relay {
		body := m.Body
		if d.rewrite != nil {
			body = d.rewrite
		}
		msg = wire.AppendMsg(nil, h.RequestID, h.ResponseTo, m.Flags&^wire.FlagMoreToCome, body, m.Sequences...)
	}
	f := d.filter
	called := false
	f.onReply = func(body bson.Raw) {
		called = true
		if mayWrite {
			c.p.flights.wrote()
		}
		if authCmd && body != nil && authSucceeded(lower, body) {
			c.authenticated = true
		}
		if d.after != nil {
			d.after(body)
		}
	}
	err = c.forward(msg, h.RequestID, relay, f)
	if !called {
		if mayWrite {
			c.p.flights.wrote() // it may have written before the connection broke
		}
		if d.after != nil {
			d.after(nil)
		}
	}
	if d.purgeAfter {
		c.p.core.Forget()
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
	refuse := func(e *mongoError) error {
		out := wire.AppendReply(nil, &wire.Reply{Header: wire.Header{RequestID: c.p.nextRequestID(), ResponseTo: h.RequestID}, Documents: [][]byte{errorReply(e)}})
		return c.writeClient(out)
	}
	if !strings.HasSuffix(q.FullCollectionName, ".$cmd") || !opQueryAllowed[name] {
		return refuse(errorf(codeUnsupportedOpQuery, "Unsupported OP_QUERY command: %s. The client driver may require an upgrade.", name))
	}
	if db, _, _ := strings.Cut(q.FullCollectionName, "."); isReservedDB(db) && !c.internal {
		return refuse(reservedError())
	}
	if name == "hello" || name == "ismaster" {
		if stripped := helloCommand(cmd); stripped != nil {
			if wrapped {
				stripped = replaceTopLevel(bson.Raw(q.Query), bson.Raw(q.Query).Index(0).Key(), stripped)
			}
			q.Query = stripped
			msg = wire.AppendQuery(nil, q)
		}
	}
	// Drivers send their first hello, with speculativeAuthenticate, over
	// OP_QUERY: authentication is tracked here too, by this command's own
	// reply (an OP_QUERY is always answered).
	authCmd := isAuthCommand(name, cmd)
	if authCmd {
		c.beginAuth()
	}
	f := replyFilter{onReply: func(body bson.Raw) {
		if authCmd && body != nil && authSucceeded(name, body) {
			c.authenticated = true
		}
	}}
	if name == "hello" || name == "ismaster" {
		f.rewrite = func(up bson.Raw) bson.Raw { return c.helloReply(name, up) }
	}
	return c.forward(msg, h.RequestID, true, f)
}

// forward sends msg (request id reqID) upstream and reads its replies: one,
// or a stream while the server sets moreToCome (exhaust cursors, streaming
// hello). They are relayed to the client, or dropped when relay is false
// (the client asked for no reply). The first reply must answer reqID:
// anything else means the connection is out of step, and it is closed.
func (c *clientConn) forward(msg []byte, reqID int32, relay bool, f replyFilter) error {
	if _, err := c.up.Write(msg); err != nil {
		return fmt.Errorf("upstream write: %w", err)
	}
	first := true
	for {
		reply, err := wire.ReadMessage(c.ur, c.ubuf[:0], upstreamMaxMessage)
		if err != nil {
			return fmt.Errorf("upstream read: %w", err)
		}
		c.ubuf = reply
		if first {
			first = false
			if h, _ := wire.ParseHeader(reply); h.ResponseTo != reqID {
				return fmt.Errorf("upstream reply answers request %d, not %d: the upstream connection is out of step", h.ResponseTo, reqID)
			}
			if f.onReply != nil {
				f.onReply(replyBody(reply))
				f.onReply = nil
			}
		}
		var out []byte
		var more bool
		if f.rewrite != nil {
			out, err = rewriteReply(reply, f.rewrite(replyBody(reply)))
		} else {
			out, more, err = filterReply(reply, f)
		}
		if err != nil {
			return fmt.Errorf("upstream reply: %w", err)
		}
		if relay {
			if err := c.writeClient(out); err != nil {
				return err
			}
		}
		if !more {
			return nil
		}
	}
}
