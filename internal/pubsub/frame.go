package pubsub

import (
	"bytes"
	"encoding/json"
	"strconv"
	"sync/atomic"
	"time"
)

// Position is a place in a channel that means the same on every node:
// Epoch is a token naming, for each stream of the channel (the messages
// one node published), the last message received from it (see
// position.go), and Offset is how many messages that accounts for.
// Clients treat both as opaque and send back the last position they got.
type Position struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}

// validEpoch: a position token, or a position from before positions were
// cluster-wide (accepted, answered with must_reload).
func validEpoch(s string) bool {
	_, _, _, ok := parseToken(s)
	return ok
}

// clientFrame is every frame a client may send.
type clientFrame struct {
	Type    string    `json:"type"`
	ID      string    `json:"id"` // optional; echoed in the reply
	Channel string    `json:"channel"`
	Token   string    `json:"token"`
	Since   *Position `json:"since"`
}

// Client frame types.
const (
	typeSubscribe   = "subscribe"
	typeUnsubscribe = "unsubscribe"
	typePing        = "ping"
	typePresence    = "presence" // also the reply's type
)

// Error codes sent in error frames (besides the token codes).
const (
	codeBadFrame        = "bad_frame"       // not a JSON object of the protocol
	codeUnknownType     = "unknown_type"    // type is not subscribe, unsubscribe, presence or ping
	codeFrameTooLarge   = "frame_too_large" // over MaxClientFrameBytes
	codeBinary          = "binary_frame"    // binary frames are not part of the protocol
	codeBadChannel      = "bad_channel"     // not "{tenant}/{thread}"
	codeUnknownTenant   = "unknown_tenant"
	codeTenantMismatch  = "tenant_mismatch" // connection is bound to another tenant
	codeOrigin          = "origin_not_allowed"
	codeTooManySubs     = "too_many_subscriptions"
	codeTooManyChannels = "too_many_channels" // the node's or the tenant's channel cap
	codeRateLimited     = "rate_limited"      // subscribe/unsubscribe/presence frames over the connection's rate
	codeNotSubscribed   = "not_subscribed"
	codeMustReload      = "must_reload" // history does not cover the gap
)

const maxIDLen = 64

// decodeClientFrame parses one client frame. It returns an error code for
// the error frame when the frame is not usable; channel, token and position
// contents are checked by the caller.
func decodeClientFrame(b []byte) (clientFrame, string) {
	var f clientFrame
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return f, codeBadFrame
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return clientFrame{}, codeBadFrame
	}
	if len(f.ID) > maxIDLen {
		return clientFrame{}, codeBadFrame
	}
	switch f.Type {
	case typeSubscribe:
		if f.Channel == "" {
			return f, codeBadChannel
		}
		if f.Since != nil && !validEpoch(f.Since.Epoch) {
			return f, codeBadFrame
		}
	case typeUnsubscribe, typePresence:
		if f.Channel == "" {
			return f, codeBadChannel
		}
	case typePing:
	default:
		return f, codeUnknownType
	}
	return f, ""
}

// serverFrame is every server frame except "message", which is built by
// hand once per message (appendMessageJSON).
type serverFrame struct {
	Type      string    `json:"type"`
	ID        string    `json:"id,omitempty"`
	Channel   string    `json:"channel,omitempty"`
	Position  *Position `json:"position,omitempty"`
	Recovered *int      `json:"recovered,omitempty"`
	Count     *int      `json:"count,omitempty"` // presence replies
	Code      string    `json:"code,omitempty"`
	Reason    string    `json:"reason,omitempty"`
}

// Server frame types.
const (
	typeMessage      = "message"
	typeSubscribed   = "subscribed"
	typeUnsubscribed = "unsubscribed"
	typePong         = "pong"
	typeError        = "error"
	typeReconnect    = "reconnect-elsewhere"
)

// appendMessageJSON appends the message frame. channel and epoch come from
// validated alphabets that need no escaping; data is compact JSON.
func appendMessageJSON(b []byte, channel string, pos Position, data []byte) []byte {
	b = append(b, `{"type":"message","channel":"`...)
	b = append(b, channel...)
	b = append(b, `","position":{"epoch":"`...)
	b = append(b, pos.Epoch...)
	b = append(b, `","offset":`...)
	b = strconv.AppendUint(b, pos.Offset, 10)
	b = append(b, `},"data":`...)
	b = append(b, data...)
	return append(b, '}')
}

// outMsg is bytes ready for the wire, encoded once and shared by every
// connection it is queued on.
type outMsg struct {
	ws      []byte // complete websocket frame (header and payload)
	payload []byte // the JSON alone (a suffix of ws when ws is set)
	sseID   string // "id:" of the SSE event, "" for none
	sse     atomic.Pointer[[]byte]
	close   bool // a websocket close frame: the connection ends after it

	// Messages of a channel: their id (stream, sequence number), time at
	// the origin (Unix ms), data and time of arrival here, for the history;
	// and the count of local deliveries still to do, for the fan-out
	// latency.
	sid, seq uint64
	otime    int64
	data     []byte
	at       time.Time
	pending  atomic.Int32
	fanout   *metrics
}

// wsHeadroom is the largest server frame header (no mask).
const wsHeadroom = 10

// newMessage builds a message frame: the JSON is written after room for the
// websocket header, which is then put in front of it, so both encodings
// share one allocation.
func newMessage(channel string, pos Position, data []byte, at time.Time) *outMsg {
	buf := make([]byte, wsHeadroom, wsHeadroom+len(channel)+len(pos.Epoch)+len(data)+80)
	buf = appendMessageJSON(buf, channel, pos, data)
	m := &outMsg{payload: buf[wsHeadroom:], at: at}
	m.data = m.payload[len(m.payload)-1-len(data) : len(m.payload)-1]
	m.ws = putWSHeader(buf, opText)
	m.sseID = channel + "@" + pos.Epoch + ":" + strconv.FormatUint(pos.Offset, 10)
	return m
}

// putWSHeader writes a server frame header for the payload at
// buf[wsHeadroom:] into the headroom and returns the whole frame.
func putWSHeader(buf []byte, op byte) []byte {
	n := len(buf) - wsHeadroom
	var h [wsHeadroom]byte
	hl := appendWSHeader(h[:0], op, n)
	start := wsHeadroom - len(hl)
	copy(buf[start:], hl)
	return buf[start:]
}

// wsFrame builds a websocket frame around payload (per-connection frames).
func wsFrame(op byte, payload []byte) []byte {
	b := make([]byte, wsHeadroom, wsHeadroom+len(payload))
	return putWSHeader(append(b, payload...), op)
}

// connFrame encodes a per-connection frame for one kind of connection.
func connFrame(kind connKind, f serverFrame) *outMsg {
	js, _ := json.Marshal(f) // plain strings and ints: cannot fail
	m := &outMsg{payload: js}
	if kind == kindWS {
		m.ws = wsFrame(opText, js)
	}
	return m
}

// sseBytes is the Server-Sent Events encoding, built on first use (most
// messages only go to websockets).
func (m *outMsg) sseBytes() []byte {
	if p := m.sse.Load(); p != nil {
		return *p
	}
	b := make([]byte, 0, len(m.sseID)+len(m.payload)+16)
	if m.sseID != "" {
		b = append(b, "id: "...)
		b = append(b, m.sseID...)
		b = append(b, '\n')
	}
	b = append(b, "data: "...)
	b = append(b, m.payload...)
	b = append(b, "\n\n"...)
	m.sse.Store(&b)
	return b
}

// sseHeartbeat is an SSE comment: it keeps proxies from timing the stream
// out and finds dead connections through write errors.
var sseHeartbeat = func() *outMsg {
	m := &outMsg{}
	b := []byte(": ping\n\n")
	m.sse.Store(&b)
	return m
}()

// wsPing is the server's keepalive ping, shared by every connection.
var wsPing = &outMsg{ws: wsFrame(opPing, nil)}

// done records one local delivery (or drop) of a fan-out message; the last
// one observes the fan-out latency.
func (m *outMsg) done() {
	if m.fanout == nil {
		return
	}
	if m.pending.Add(-1) == 0 {
		m.fanout.fanout.Observe(time.Since(m.at).Seconds())
	}
}
