package h2

import (
	"encoding/binary"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The frames the server sends, appended to conn.out (mu held). They are
// written here rather than with http2.Framer's writers, which copy each
// frame into a buffer of their own before writing it to an io.Writer.

func (c *conn) frameHeader(length int, t http2.FrameType, flags http2.Flags, id uint32) {
	if c.out == nil {
		c.out = c.s.getBuf()
	}
	c.out = append(c.out, byte(length>>16), byte(length>>8), byte(length), byte(t), byte(flags),
		byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id))
}

func (c *conn) writeSettings(settings ...http2.Setting) {
	c.frameHeader(6*len(settings), http2.FrameSettings, 0, 0)
	for _, s := range settings {
		c.out = binary.BigEndian.AppendUint16(c.out, uint16(s.ID))
		c.out = binary.BigEndian.AppendUint32(c.out, s.Val)
	}
}

func (c *conn) writeSettingsAck() { c.frameHeader(0, http2.FrameSettings, http2.FlagSettingsAck, 0) }

func (c *conn) writePing(data [8]byte) {
	c.frameHeader(8, http2.FramePing, http2.FlagPingAck, 0)
	c.out = append(c.out, data[:]...)
}

func (c *conn) writeWindowUpdate(id, incr uint32) {
	if incr == 0 {
		return
	}
	c.frameHeader(4, http2.FrameWindowUpdate, 0, id)
	c.out = binary.BigEndian.AppendUint32(c.out, incr&0x7fffffff)
}

func (c *conn) writeRST(id uint32, code http2.ErrCode) {
	c.frameHeader(4, http2.FrameRSTStream, 0, id)
	c.out = binary.BigEndian.AppendUint32(c.out, uint32(code))
}

func (c *conn) writeGoAway(last uint32, code http2.ErrCode, debug []byte) {
	c.frameHeader(8+len(debug), http2.FrameGoAway, 0, 0)
	c.out = binary.BigEndian.AppendUint32(c.out, last&0x7fffffff)
	c.out = binary.BigEndian.AppendUint32(c.out, uint32(code))
	c.out = append(c.out, debug...)
}

// dataChunk is the largest DATA payload sent: with its frame header, one
// full TLS record (16 KiB of plaintext). A 16 KiB payload would make every
// frame a full record plus one of 9 bytes, each sealed and (past the
// transport's cork threshold) written on its own: 64 extra records and
// system calls per MiB.
const dataChunk = 16<<10 - 9

// writeData appends DATA frames for p, no larger than the client's maximum
// frame size; the windows are the caller's business.
func (c *conn) writeData(id uint32, p []byte, end bool) {
	for {
		n := min(len(p), c.maxFrame, dataChunk)
		var flags http2.Flags
		if end && n == len(p) {
			flags = http2.FlagDataEndStream
		}
		c.frameHeader(n, http2.FrameData, flags, id)
		c.out = append(c.out, p[:n]...)
		p = p[n:]
		if len(p) == 0 {
			return
		}
	}
}

// writeHeaders HPACK-encodes :status and fields and appends them as HEADERS
// (and CONTINUATION) frames. Encoding and appending happen under the same
// lock, so header blocks reach the wire in the order the encoder's dynamic
// table saw them.
func (c *conn) writeHeaders(id uint32, status int, fields []hpack.HeaderField, end bool) {
	c.writeHeadersBlock(id, status, fields, nil, end)
}

// writeHeadersBlock is writeHeaders with fields already encoded without
// table state (FastAnswer.Block) after the others.
func (c *conn) writeHeadersBlock(id uint32, status int, fields []hpack.HeaderField, block []byte, end bool) {
	c.encBuf.Reset()
	_ = c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText(status)})
	for _, f := range fields {
		_ = c.enc.WriteField(f)
	}
	c.encBuf.Write(block)
	c.writeBlock(id, c.encBuf.Bytes(), end)
}

// writeTrailers sends fields as the trailing HEADERS that end the stream.
func (c *conn) writeTrailers(id uint32, fields []hpack.HeaderField) {
	c.encBuf.Reset()
	for _, f := range fields {
		_ = c.enc.WriteField(f)
	}
	c.writeBlock(id, c.encBuf.Bytes(), true)
}

func (c *conn) writeBlock(id uint32, block []byte, end bool) {
	t := http2.FrameHeaders
	for first := true; ; first = false {
		n := min(len(block), c.maxFrame)
		var flags http2.Flags
		if first && end {
			flags |= http2.FlagHeadersEndStream
		}
		if n == len(block) {
			flags |= http2.FlagHeadersEndHeaders
		}
		c.frameHeader(n, t, flags, id)
		c.out = append(c.out, block[:n]...)
		block = block[n:]
		t = http2.FrameContinuation
		if len(block) == 0 {
			return
		}
	}
}

var statusTexts = func() (t [600]string) {
	for i := 100; i < len(t); i++ {
		t[i] = itoa3(i)
	}
	return t
}()

func statusText(code int) string {
	if code >= 100 && code < len(statusTexts) {
		return statusTexts[code]
	}
	return itoa3(code)
}

func itoa3(n int) string {
	return string([]byte{byte('0' + n/100%10), byte('0' + n/10%10), byte('0' + n%10)})
}
