package mesh

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Link stream format. Every topic gets its own unidirectional QUIC stream per
// direction, so a slow consumer of one topic never holds up another and
// messages of one topic arrive in order. A stream starts with a header:
//
//	version byte, topic length byte (1..255), topic bytes
//
// where the version is the mesh protocol version the link negotiated in its
// handshake (ALPN, see Protocol); a stream that names another is refused.
// (Version 1 nodes wrote and required 1, their only version.)
//
// and then carries frames, each a message:
//
//	uvarint payload length, payload
//
// The writer packs many frames into one stream write; that batching is what
// makes small messages cheap.
const maxTopicLen = 255

var (
	errFrameTooLarge = errors.New("frame larger than the maximum message size")
	errBadHeader     = errors.New("bad stream header")
)

// ValidTopic reports whether t may name a topic: 1 to 255 printable ASCII
// characters without spaces.
func ValidTopic(t string) error {
	if t == "" || len(t) > maxTopicLen {
		return fmt.Errorf("topic %q: length must be 1..%d", t, maxTopicLen)
	}
	for i := 0; i < len(t); i++ {
		if t[i] <= ' ' || t[i] > '~' {
			return fmt.Errorf("topic %q: character %q at %d not allowed", t, t[i], i)
		}
	}
	return nil
}

func appendStreamHeader(b []byte, version int, topic string) []byte {
	b = append(b, byte(version), byte(len(topic)))
	return append(b, topic...)
}

func appendFrame(b, msg []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(msg)))
	return append(b, msg...)
}

// frameSize is the encoded size of a frame carrying n bytes.
func frameSize(n int) int {
	s := 1
	for v := uint64(n); v >= 0x80; v >>= 7 {
		s++
	}
	return s + n
}

// readStreamHeader reads and checks the header of a stream on a link of
// the given protocol version.
func readStreamHeader(r *bufio.Reader, version int) (string, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return "", fmt.Errorf("%w: %w", errBadHeader, err)
	}
	if int(h[0]) != version {
		return "", fmt.Errorf("%w: version %d on a link of version %d", errBadHeader, h[0], version)
	}
	topic := make([]byte, h[1])
	if _, err := io.ReadFull(r, topic); err != nil {
		return "", fmt.Errorf("%w: %w", errBadHeader, err)
	}
	if err := ValidTopic(string(topic)); err != nil {
		return "", fmt.Errorf("%w: %w", errBadHeader, err)
	}
	return string(topic), nil
}

// readFrame reads one frame of at most max payload bytes. The payload is a
// new slice the caller owns. io.EOF means the stream ended cleanly between
// frames; a stream cut inside a frame is io.ErrUnexpectedEOF.
func readFrame(r *bufio.Reader, max int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		if err == io.EOF {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("frame length: %w", err)
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("%w: %d > %d", errFrameTooLarge, n, max)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("frame body: %w", err)
	}
	return msg, nil
}
