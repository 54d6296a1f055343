package pubsub

import (
	"encoding/binary"
	"unicode/utf8"
)

// The websocket framing (RFC 6455) of this package: gorilla/websocket does
// the opening handshake; after it the connection's bytes are handled here,
// because (1) every write to a socket must be one whole frame that was
// encoded once for all subscribers, possibly several frames in one write,
// and (2) an idle connection must hold no goroutine and no read buffer,
// which needs a reader that can stop between any two bytes and resume later
// (wsReader keeps the partial frame, if any, and nothing else).

// Opcodes.
const (
	opCont   = 0x0
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xA
)

// Close codes.
const (
	closeNormal         = 1000
	closeGoingAway      = 1001
	closeProtocolError  = 1002
	closeUnsupported    = 1003
	closeNoStatus       = 1005
	closeInvalidPayload = 1007
	closePolicy         = 1008
	closeTooBig         = 1009
	closeServiceRestart = 1012
)

// appendWSHeader appends an unmasked, final frame header.
func appendWSHeader(b []byte, op byte, n int) []byte {
	b = append(b, 0x80|op)
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xFFFF:
		return append(b, 126, byte(n>>8), byte(n))
	default:
		b = append(b, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

// closePayload is the body of a close frame: code and a reason (at most
// 123 bytes, cut at a rune boundary).
func closePayload(code int, reason string) []byte {
	for len(reason) > 123 {
		_, size := utf8.DecodeLastRuneInString(reason)
		reason = reason[:len(reason)-size]
	}
	b := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(b, uint16(code))
	return append(b, reason...)
}

// wsError ends a connection with a close code and reason.
type wsError struct {
	code   int
	reason string
}

func (e *wsError) Error() string { return e.reason }

// wsReader parses client frames incrementally. Only whole messages and
// control frames are handed on.
type wsReader struct {
	max   int    // largest message payload accepted
	buf   []byte // bytes of an incomplete frame; nil between frames
	msg   []byte // payload of a fragmented message so far
	msgOp byte   // its opcode; 0 when none is in progress
}

// feed consumes data (which it may modify) and calls fn for each complete
// message (opText, opBinary) and control frame, in order. The payload is
// only valid during the call. fn's error, or a protocol error, stops it.
func (r *wsReader) feed(data []byte, fn func(op byte, payload []byte) error) error {
	if len(r.buf) > 0 {
		r.buf = append(r.buf, data...)
		data = r.buf
	}
	for {
		n, err := r.frame(data, fn)
		if err != nil {
			r.buf, r.msg = nil, nil
			return err
		}
		if n == 0 {
			break
		}
		data = data[n:]
	}
	if len(data) == 0 {
		r.buf = nil
	} else {
		// Keep the partial frame in a buffer of its own size.
		r.buf = append([]byte(nil), data...)
	}
	return nil
}

// frame parses one frame at the start of b; it returns 0 when b does not
// hold a complete frame yet.
func (r *wsReader) frame(b []byte, fn func(op byte, payload []byte) error) (int, error) {
	if len(b) < 2 {
		return 0, nil
	}
	b0, b1 := b[0], b[1]
	fin, op := b0&0x80 != 0, b0&0x0F
	if b0&0x70 != 0 {
		return 0, &wsError{closeProtocolError, "reserved bits set"}
	}
	if b1&0x80 == 0 {
		return 0, &wsError{closeProtocolError, "client frame not masked"}
	}
	n, hl := uint64(b1&0x7F), 2
	switch n {
	case 126:
		if len(b) < 4 {
			return 0, nil
		}
		n, hl = uint64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return 0, nil
		}
		n, hl = binary.BigEndian.Uint64(b[2:]), 10
	}
	switch op {
	case opClose, opPing, opPong:
		if !fin || n > 125 {
			return 0, &wsError{closeProtocolError, "bad control frame"}
		}
	case opText, opBinary:
		if r.msgOp != 0 {
			return 0, &wsError{closeProtocolError, "new message inside a fragmented one"}
		}
	case opCont:
		if r.msgOp == 0 {
			return 0, &wsError{closeProtocolError, "continuation without a message"}
		}
	default:
		return 0, &wsError{closeProtocolError, "reserved opcode"}
	}
	// Check the size before waiting for the payload: a client announcing a
	// huge frame is cut off at once, not buffered.
	if op < opClose && n > uint64(r.max-len(r.msg)) {
		return 0, &wsError{closeTooBig, "frame too large"}
	}
	total := uint64(hl) + 4 + n
	if uint64(len(b)) < total {
		return 0, nil
	}
	mask := b[hl : hl+4]
	p := b[hl+4 : total]
	for i := range p {
		p[i] ^= mask[i&3]
	}
	var err error
	switch {
	case op >= opClose:
		err = fn(op, p)
	case op == opCont:
		r.msg = append(r.msg, p...)
		if fin {
			msg, mop := r.msg, r.msgOp
			r.msg, r.msgOp = nil, 0
			err = fn(mop, msg)
		}
	case fin:
		err = fn(op, p)
	default:
		r.msg, r.msgOp = append([]byte(nil), p...), op
	}
	return int(total), err
}
