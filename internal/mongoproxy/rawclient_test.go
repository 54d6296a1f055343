package mongoproxy

import (
	"context"
	"net"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/mongoproxy/wire"
)

// rawClient speaks the wire protocol by hand over a real socket, the way an
// attacker would: nothing a driver does for it.
type rawClient struct {
	t  testing.TB
	nc net.Conn
	id int32
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	return &rawClient{t: t, nc: nc}
}

// send writes one OP_MSG and returns its request id; a write error (the
// proxy closed the connection) is returned, not fatal.
func (r *rawClient) send(flags uint32, body bson.D, seqs ...wire.Sequence) (int32, error) {
	r.t.Helper()
	r.id++
	_ = r.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
	_, err := r.nc.Write(wire.AppendMsg(nil, r.id, 0, flags, rawDoc(r.t, body), seqs...))
	return r.id, err
}

// sendQuery writes one legacy OP_QUERY command to db.$cmd.
func (r *rawClient) sendQuery(db string, body bson.D) (int32, error) {
	r.t.Helper()
	r.id++
	q := &wire.Query{Header: wire.Header{RequestID: r.id}, FullCollectionName: db + ".$cmd", NumberToReturn: -1, Query: rawDoc(r.t, body)}
	_ = r.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
	_, err := r.nc.Write(wire.AppendQuery(nil, q))
	return r.id, err
}

// read returns the next reply's header and first document (OP_MSG body or
// OP_REPLY document); an error means the connection was closed or broken.
func (r *rawClient) read() (wire.Header, bson.Raw, error) {
	r.t.Helper()
	_ = r.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	msg, err := wire.ReadMessage(r.nc, nil, 0)
	if err != nil {
		return wire.Header{}, nil, err
	}
	h, _ := wire.ParseHeader(msg)
	switch h.OpCode {
	case wire.OpMsg:
		m, err := wire.ParseMsg(msg)
		if err != nil {
			r.t.Fatalf("reply: %v", err)
		}
		return h, bson.Raw(m.Body), nil
	case wire.OpReply:
		rep, err := wire.ParseReply(msg)
		if err != nil || len(rep.Documents) == 0 {
			r.t.Fatalf("reply: %v %+v", err, rep)
		}
		return h, bson.Raw(rep.Documents[0]), nil
	}
	r.t.Fatalf("reply op code %d", h.OpCode)
	return h, nil, nil
}

// cmd sends body (no flags) and returns the reply to it.
func (r *rawClient) cmd(body bson.D, seqs ...wire.Sequence) bson.Raw {
	r.t.Helper()
	id, err := r.send(0, body, seqs...)
	if err != nil {
		r.t.Fatalf("send %v: %v", body, err)
	}
	h, reply, err := r.read()
	if err != nil {
		r.t.Fatalf("reply to %v: %v", body, err)
	}
	if h.ResponseTo != id {
		r.t.Fatalf("reply to %v answers request %d, not %d: %v", body, h.ResponseTo, id, reply)
	}
	return reply
}

// internalClient is a driver client over Proxy.DialInternal.
func internalClient(t testing.TB, p *Proxy) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI("mongodb://edgenode-internal.invalid:27017/?directConnection=true").
		SetDialer(dialerFunc(p.DialInternal)).SetTimeout(60 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = c.Disconnect(ctx)
	})
	return c
}

type dialerFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialerFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}
