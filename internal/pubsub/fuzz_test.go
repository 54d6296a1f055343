package pubsub

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strconv"
	"testing"
	"time"
)

// Every parser of bytes from outside: client JSON frames, websocket
// framing, tokens, SSE event ids, messages from peers. The seeds run as
// part of go test.

func FuzzDecodeClientFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","channel":"demo/thread-1"}`,
		`{"type":"subscribe","channel":"demo/thread-1","token":"a.b.c","since":{"epoch":"abcdefgh","offset":12},"id":"1"}`,
		`{"type":"unsubscribe","channel":"demo/thread-1"}`,
		`{"type":"ping","id":"x"}`,
		`{"type":"presence","channel":"demo/thread-1","id":"p1"}`, `{"type":"presence"}`,
		`{"type":"subscribe","channel":"demo/x","channel":"acme/y"}`,
		`{"Type":"SUBSCRIBE"}`, `{"type":null}`, `{}`, `[]`, `"x"`, ``, ` {`, `{"since":{"offset":1e99}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, code := decodeClientFrame(b)
		if code != "" {
			return
		}
		switch fr.Type {
		case typeSubscribe, typeUnsubscribe, typePresence:
			if fr.Channel == "" {
				t.Fatalf("accepted %q without channel", b)
			}
		case typePing:
		default:
			t.Fatalf("accepted type %q", fr.Type)
		}
		if len(fr.ID) > maxIDLen || fr.Since != nil && !validEpoch(fr.Since.Epoch) {
			t.Fatalf("accepted %q", b)
		}
	})
}

type wsEvent struct {
	op      byte
	payload string
}

func feedAll(r *wsReader, chunks [][]byte) ([]wsEvent, error) {
	var evs []wsEvent
	for _, c := range chunks {
		err := r.feed(append([]byte(nil), c...), func(op byte, p []byte) error {
			evs = append(evs, wsEvent{op, string(p)})
			return nil
		})
		if err != nil {
			return evs, err
		}
	}
	return evs, nil
}

func FuzzWSReader(f *testing.F) {
	f.Add(mkFrame(0x81, []byte(`{"type":"ping"}`), true), 3)
	f.Add(append(mkFrame(0x01, []byte("ab"), true), mkFrame(0x80, []byte("cd"), true)...), 1)
	f.Add(append(mkFrame(0x89, []byte("p"), true), mkFrame(0x88, []byte{3, 232}, true)...), 5)
	f.Add(mkFrame(0x82, bytes.Repeat([]byte{7}, 300), true), 100)
	f.Add([]byte{0x81, 0xFF, 0, 0, 0, 0, 0, 0, 1, 0}, 2)
	f.Add(mkFrame(0x81, []byte("x"), false), 1)
	f.Fuzz(func(t *testing.T, b []byte, split int) {
		const max = 256
		// Whole, and cut in pieces: the same frames, or the same error.
		whole, errWhole := feedAll(&wsReader{max: max}, [][]byte{b})
		var chunks [][]byte
		step := 1 + abs(split)%17
		for i := 0; i < len(b); i += step {
			chunks = append(chunks, b[i:min(len(b), i+step)])
		}
		pieces, errPieces := feedAll(&wsReader{max: max}, chunks)
		if (errWhole == nil) != (errPieces == nil) {
			t.Fatalf("whole: %v, in pieces: %v", errWhole, errPieces)
		}
		if len(whole) != len(pieces) {
			t.Fatalf("whole %d events, pieces %d", len(whole), len(pieces))
		}
		for i := range whole {
			if whole[i] != pieces[i] {
				t.Fatalf("event %d differs", i)
			}
			if whole[i].op < opClose && len(whole[i].payload) > max || whole[i].op >= opClose && len(whole[i].payload) > 125 {
				t.Fatalf("event over the limit: %d bytes", len(whole[i].payload))
			}
		}
	})
}

func abs(i int) int {
	if i < 0 {
		return -i
	}
	return i
}

func FuzzVerifyToken(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	tn := &tenant{name: "demo"}
	tn.rules.Store(&tenantRules{secret: secret})
	exp := time.Now().Add(24 * time.Hour).Unix()
	for _, ch := range []string{"demo/thread-1", "demo/*", "demo/thr*", "acme/thread-1"} {
		tok, _ := SignHS256(TokenClaims{Tenant: "demo", Channel: ch, Exp: exp}, secret)
		f.Add(tok, "thread-1")
	}
	f.Add("a.b.c", "x")
	f.Add("eyJhbGciOiJub25lIn0.e30.", "x")
	f.Fuzz(func(t *testing.T, tok, thread string) {
		now := time.Now()
		if verifyToken(tn, tok, thread, now) != "" {
			return
		}
		// Accepted: it must be the secret that made it valid.
		other := &tenant{name: "demo"}
		other.rules.Store(&tenantRules{secret: []byte("another-secret-another-secret-00")})
		if verifyToken(other, tok, thread, now) == "" {
			t.Fatalf("token %q valid under two secrets", tok)
		}
	})
}

func FuzzParseEventID(f *testing.F) {
	for _, s := range []string{"demo/thread-1@abcdefgh:12", "demo/t@a:0", "@:", "demo/x@@a:1", "demo/x@abc:99999999999999999999999", "x@y:z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ch, pos, ok := parseEventID(s)
		if !ok {
			return
		}
		if _, _, valid := splitChannel(ch); !valid || !validEpoch(pos.Epoch) {
			t.Fatalf("accepted %q", s)
		}
		if id := ch + "@" + pos.Epoch + ":" + strconv.FormatUint(pos.Offset, 10); id != s {
			if c2, p2, ok2 := parseEventID(id); !ok2 || c2 != ch || p2 != pos {
				t.Fatalf("%q does not round-trip", s)
			}
		}
	})
}

func FuzzPeerMessages(f *testing.F) {
	f.Add(encodeMessage(wireMsg{channel: "demo/thread-1", sid: 12345, seq: 7, otime: 1700000000000, data: []byte(`{"a":1}`)}))
	f.Add(encodeLegacy("demo/thread-1", []byte(`{"a":1}`)))
	f.Add([]byte{kindPresence, 1, 13, 'd', 'e', 'm', 'o', '/', 't', 'h', 'r', 'e', 'a', 'd', '-', '1', 3})
	f.Add([]byte{kindPresence, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{kindMessage, 0x80})
	f.Add(wrap(kindRelay, "node2", encodeLegacy("demo/x", []byte("1"))))
	f.Add(encodeHeartbeat(heartbeat{instance: 9, peers: []hbPeer{{"node1", 3}, {"node2", 1}}}))
	f.Add(encodeInterest([]interestOp{{1, true}, {2, false}}))
	f.Add(encodeDigest(digest{round: 3, part: 0, parts: 2, hashes: []uint64{1, 2, 3}}))
	f.Add(encodeSyncReq(syncReq{id: 4, flags: syncRegister | syncMessages, channel: "demo/x", since: vector{{1, 2}, {3, 4}}}))
	f.Add(encodeSyncReply(syncReply{id: 4, final: true, channel: "demo/x", heads: []head{{1, 2, 9, ""}, {3, 4, 10, "node3"}},
		msgs: []wireMsg{{sid: 1, seq: 2, otime: 5, data: []byte("6")}}}))
	f.Add(encodeHeads([]chanHead{{hash: 1, sid: 2, seq: 3}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Every decoder refuses b or reads exactly what its encoder writes.
		roundTrip := func(what string, enc []byte) {
			if !bytes.Equal(enc, b) {
				t.Fatalf("%s %q does not round-trip: %q", what, b, enc)
			}
		}
		if len(b) == 0 {
			return
		}
		switch b[0] {
		case kindMessage:
			if m, err := decodeMessage(b); err == nil {
				roundTrip("message", encodeMessage(m))
			}
		case kindLegacy:
			if ch, data, err := decodeLegacy(b); err == nil {
				roundTrip("legacy message", encodeLegacy(ch, data))
			}
		case kindRelay, kindRelayed:
			if node, inner, err := unwrap(b); err == nil {
				roundTrip("relay", wrap(b[0], node, inner))
			}
		case kindHeartbeat:
			if h, err := decodeHeartbeat(b); err == nil {
				roundTrip("heartbeat", encodeHeartbeat(h))
			}
		case kindInterest:
			if ops, err := decodeInterest(b); err == nil {
				roundTrip("interest", encodeInterest(ops))
			}
		case kindDigest:
			if d, err := decodeDigest(b); err == nil {
				roundTrip("digest", encodeDigest(d))
			}
		case kindSyncReq:
			if q, err := decodeSyncReq(b); err == nil {
				roundTrip("sync request", encodeSyncReq(q))
			}
		case kindSyncReply:
			if r, err := decodeSyncReply(b); err == nil {
				roundTrip("sync reply", encodeSyncReply(r))
			}
		case kindHeads:
			if hs, err := decodeHeads(b); err == nil {
				roundTrip("heads", encodeHeads(hs))
			}
		}
		if entries, err := decodePresence(b); err == nil {
			out := []byte{kindPresence}
			out = binary.AppendUvarint(out, uint64(len(entries)))
			for _, e := range entries {
				if _, _, ok := splitChannel(e.ch); !ok {
					t.Fatalf("presence accepted channel %q", e.ch)
				}
				out = binary.AppendUvarint(out, uint64(len(e.ch)))
				out = append(out, e.ch...)
				out = binary.AppendUvarint(out, uint64(e.n))
			}
			if len(out) > len(b) {
				t.Fatalf("presence %q decoded to more than it holds", b)
			}
		}
	})
}

func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"0~1", "abcdefgh.1~1767225600", "abcdefgh.1_bcdefghi.22~0", "k3j5x2ab", "abcdefgh.0~5", "abcdefgh.1_abcdefgh.2~1", "aaaaaaaa.01~1", "_", ".", "0~01", "abcdefgh.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ts, legacy, ok := parseToken(s)
		if !ok || legacy {
			return
		}
		if len(v) > maxVectorLen || !sortedVector(v) {
			t.Fatalf("%q: bad vector %v", s, v)
		}
		for _, e := range v {
			if e.seq == 0 || e.sid == 0 || e.sid >= 1<<sidBits {
				t.Fatalf("%q: bad entry %v", s, e)
			}
		}
		// The canonical form reads back the same.
		v2, ts2, _, ok2 := parseToken(v.token(ts))
		if !ok2 || !slices.Equal(v, v2) || ts2 != ts {
			t.Fatalf("%q: token %q does not round-trip", s, v.token(ts))
		}
	})
}
