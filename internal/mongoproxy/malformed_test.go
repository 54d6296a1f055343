package mongoproxy

import (
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// sendRaw writes b on a fresh connection, half-closes it, and returns what
// the proxy answered before closing its side.
func sendRaw(t *testing.T, addr string, b []byte) []byte {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := nc.Write(b); err != nil {
		return nil // the proxy may close before reading everything
	}
	_ = nc.(*net.TCPConn).CloseWrite()
	out, err := io.ReadAll(nc)
	if err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the proxy did not close the connection: %v", err)
	}
	return out
}

func header(length, op int32) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b, uint32(length))
	binary.LittleEndian.PutUint32(b[4:], 1)
	binary.LittleEndian.PutUint32(b[12:], uint32(op))
	return b
}

// TestMalformedMessages sends broken messages: each closes its own
// connection with a log line and no other. Long on purpose: one table of
// malformations.
func TestMalformedMessages(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	addr := tp.Addr().String()
	c := tp.client.Database(freshDB("mal")).Collection("c")

	// Another client keeps working the whole time.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var good atomic.Int64
	var bad atomic.Value
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: i}}); err != nil {
				bad.Store(err)
				return
			}
			if err := c.FindOne(testCtx, bson.D{{Key: "_id", Value: i}}).Err(); err != nil {
				bad.Store(err)
				return
			}
			good.Add(1)
		}
	}()

	body := rawDoc(t, bson.D{{Key: "insert", Value: "c"}, {Key: "$db", Value: c.Database().Name()}})
	doc := rawDoc(t, bson.D{{Key: "_id", Value: "x"}, {Key: "v", Value: "abc"}})
	valid := wire.AppendMsg(nil, 5, 0, wire.FlagChecksumPresent, body, wire.Sequence{Identifier: "documents", Docs: [][]byte{doc}})
	mut := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), valid...)) }
	cases := map[string][]byte{
		"short length":   header(10, wire.OpMsg),
		"huge length":    header(1<<30, wire.OpMsg),
		"compressed":     append(header(25, wire.OpCompressed), make([]byte, 9)...),
		"unknown opcode": append(header(20, 9999), 0, 0, 0, 0),
		"legacy insert":  append(header(20, wire.OpInsert), 0, 0, 0, 0),
		"bad checksum":   mut(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }),
		"bson length lies": mut(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[21:], 200)
			return b
		}),
		"unknown section": mut(func(b []byte) []byte { b[20] = 7; return b }),
		"truncated":       valid[:len(valid)-5],
		"garbage":         []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\nlots of garbage here........"),
		"valid then garbage": append(append([]byte(nil), wire.AppendMsg(nil, 9, 0, 0,
			rawDoc(t, bson.D{{Key: "ping", Value: 1}, {Key: "$db", Value: "admin"}}))...), header(3, 1)...),
	}
	for name, b := range cases {
		out := sendRaw(t, addr, b)
		if name == "valid then garbage" {
			if len(out) < 16 || binary.LittleEndian.Uint32(out[12:]) != uint32(wire.OpMsg) {
				t.Errorf("%s: no reply to the valid message", name)
			}
			continue
		}
		if len(out) != 0 {
			t.Errorf("%s: proxy answered %d bytes instead of closing", name, len(out))
		}
	}
	// Random corruptions of a valid message: whatever happens, no crash.
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 300; i++ {
		b := append([]byte(nil), valid...)
		for j := 0; j <= rng.IntN(4); j++ {
			b[rng.IntN(len(b))] = byte(rng.Uint32())
		}
		if rng.IntN(4) == 0 {
			b = b[:rng.IntN(len(b))]
		}
		sendRaw(t, addr, b)
	}
	close(stop)
	wg.Wait()
	if err, _ := bad.Load().(error); err != nil {
		t.Fatalf("the well-behaved client failed: %v", err)
	}
	if good.Load() == 0 {
		t.Fatal("the well-behaved client made no progress")
	}
	if n := counter(t, tp.reg, "edgenode_mongoproxy_bad_messages_total"); n < float64(len(cases)-1) {
		t.Fatalf("bad message metric %v", n)
	}
	logs := tp.logs.String()
	for _, want := range []string{"OP_COMPRESSED", "checksum mismatch", "exceeds the maximum", "op code 2002"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no log line mentioning %q", want)
		}
	}
	// Still serving.
	if err := tp.client.Ping(testCtx, nil); err != nil {
		t.Fatal(err)
	}
}

// TestHandshake checks the legacy OP_QUERY handshake: compression is not
// offered to the server, and OP_QUERY commands other than the handshake are
// refused (they could be writes bypassing capture).
func TestHandshake(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	nc, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	q := &wire.Query{Header: wire.Header{RequestID: 1}, FullCollectionName: "admin.$cmd", NumberToReturn: -1,
		Query: rawDoc(t, bson.D{{Key: "isMaster", Value: 1}, {Key: "compression", Value: bson.A{"zstd", "snappy"}}})}
	if _, err := nc.Write(wire.AppendQuery(nil, q)); err != nil {
		t.Fatal(err)
	}
	msg, err := wire.ReadMessage(nc, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err := wire.ParseReply(msg)
	if err != nil || len(r.Documents) != 1 || r.Header.ResponseTo != 1 {
		t.Fatalf("reply: %v %+v", err, r)
	}
	hello := bson.Raw(r.Documents[0])
	if hello.Lookup("ok").AsFloat64() != 1 || hello.Lookup("compression").Type != 0 {
		t.Fatalf("hello reply: %v", hello)
	}
	q = &wire.Query{Header: wire.Header{RequestID: 2}, FullCollectionName: "x.$cmd", NumberToReturn: -1,
		Query: rawDoc(t, bson.D{{Key: "insert", Value: "c"}, {Key: "documents", Value: bson.A{bson.D{{Key: "a", Value: 1}}}}})}
	if _, err := nc.Write(wire.AppendQuery(nil, q)); err != nil {
		t.Fatal(err)
	}
	msg, err = wire.ReadMessage(nc, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	r, err = wire.ParseReply(msg)
	if err != nil || bson.Raw(r.Documents[0]).Lookup("code").AsInt64() != int64(codeUnsupportedOpQuery) {
		t.Fatalf("OP_QUERY insert: %v %v", err, r)
	}
	// OP_MSG hello with compression: the server is never offered it.
	b := wire.AppendMsg(nil, 3, 0, wire.FlagChecksumPresent, rawDoc(t, bson.D{{Key: "hello", Value: 1}, {Key: "compression", Value: bson.A{"zlib"}}, {Key: "$db", Value: "admin"}}))
	if _, err := nc.Write(b); err != nil {
		t.Fatal(err)
	}
	msg, err = wire.ReadMessage(nc, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := wire.ParseMsg(msg)
	if err != nil || bson.Raw(m.Body).Lookup("compression").Type != 0 || m.Header.ResponseTo != 3 {
		t.Fatalf("OP_MSG hello: %v %v", err, bson.Raw(m.Body))
	}
}

// TestShutdownDrains: Shutdown closes idle connections at once, stops
// accepting, and returns cleanly.
func TestShutdownDrains(t *testing.T) {
	tp := newProxy(t, 0, "n1")
	idle, err := net.Dial("tcp", tp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	c := tp.client.Database(freshDB("shut")).Collection("c")
	if _, err := c.InsertOne(testCtx, bson.D{{Key: "_id", Value: 1}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the idle connection be accepted
	done := make(chan error, 1)
	// Bounded: a shutdown that cannot finish is a failure to see, not a hang.
	sctx, cancel := context.WithTimeout(testCtx, 30*time.Second)
	defer cancel()
	go func() { done <- tp.Shutdown(sctx) }()
	_ = idle.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Fatal("idle connection not closed")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", tp.Addr().String(), time.Second); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
}
