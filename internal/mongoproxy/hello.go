package mongoproxy

import (
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// The handshake. A driver learns the deployment from hello/isMaster
// replies; were the upstream's passed through, a driver would discover the
// database's members and talk to them directly, bypassing the proxy and
// with it capture. So the proxy answers as itself: a one-member replica
// set named Options.SetName whose only member, primary, is the address the
// client reached the proxy at (Options.Advertise, else the accepted
// socket's local address).
//
// A replica-set member rather than a standalone, because drivers offer
// retryable writes and sessions only to a replica-set member or mongos
// (the Go driver's retryWritesSupported: a session timeout and a server
// kind other than Standalone), and the proxy serves both.
//
// The hello is still forwarded to the client's upstream connection: it
// carries the client's speculative authentication, whose reply the client
// needs (speculativeAuthenticate, saslSupportedMechs are kept), and the
// upstream's wire versions and limits bound the proxy's. The rest of the
// upstream's reply is dropped: hosts, passives, arbiters, primary, me,
// setName, setVersion, electionId, tags, lastWrite, topologyVersion,
// isWritablePrimary.
//
// Left out on purpose:
//   - electionId and setVersion. A driver keeps the largest (electionId,
//     setVersion) a primary of the set reported and takes a primary that
//     reports a smaller one for stale, marking it Unknown (SDAM's
//     updateRSFromPrimary). A proxy restarted (or another proxy answering
//     at the same address) could only keep them monotonic by persisting
//     them; without them there is nothing to compare, and a one-member
//     set has no competing primary for them to settle.
//   - topologyVersion: without it drivers poll hello (heartbeatFrequencyMS)
//     instead of holding a streaming hello on the connection, which the
//     proxy does not implement.
//
// isWritablePrimary stays true while the replica core's write gate
// refuses writes (a node not yet a complete replica): a set whose only
// member is not primary would make drivers refuse every operation, reads
// included, until server selection times out, while the node can serve
// reads; a captured write gets error 10107 NotWritablePrimary naming the
// reason instead, which the driver reports (or retries once).

// helloAsked are the fields a client's hello may carry that the proxy does
// not pass on: compression (it never compresses), and the streaming
// hello's topologyVersion and maxAwaitTimeMS (it answers at once).
var helloAsked = []string{"compression", "topologyVersion", "maxAwaitTimeMS"}

// helloCommand is the client's hello or isMaster as forwarded (nil: as is).
func helloCommand(body bson.Raw) bson.Raw {
	var out bson.Raw
	for _, k := range helloAsked {
		from := body
		if out != nil {
			from = out
		}
		if b, changed := removeTopLevel(from, k); changed {
			out = b
		}
	}
	return out
}

// helloKept are the upstream reply's fields the client gets as they are:
// what its authentication needs, and the cluster time it gossips.
var helloKept = []string{"saslSupportedMechs", "speculativeAuthenticate", "$clusterTime", "operationTime"}

// helloReply is the proxy's own hello (legacy: name "ismaster") reply
// for connection c, built from the upstream's reply up. An upstream
// failure is passed on as it is: it names no member.
func (c *clientConn) helloReply(name string, up bson.Raw) bson.Raw {
	if up == nil {
		return errorReply(errorf(codeInternalError, "edgenode: the upstream database's %s reply is malformed", name))
	}
	if ok, _ := up.Lookup("ok").AsFloat64OK(); ok != 1 {
		return up
	}
	me := c.p.opts.Advertise
	if me == "" {
		me = c.c.LocalAddr().String()
	}
	i32 := func(key string, def int32) int32 {
		if v, ok := up.Lookup(key).AsInt64OK(); ok {
			return int32(v)
		}
		return def
	}
	idx, b := bsoncore.AppendDocumentStart(nil)
	if name == "hello" {
		b = bsoncore.AppendBooleanElement(b, "isWritablePrimary", true)
	} else {
		b = bsoncore.AppendBooleanElement(b, "ismaster", true)
	}
	if v := up.Lookup("helloOk"); v.Type == bson.TypeBoolean {
		b = bsoncore.AppendBooleanElement(b, "helloOk", v.Boolean())
	}
	b = bsoncore.AppendStringElement(b, "setName", c.p.opts.SetName)
	b = bsoncore.AppendArrayElement(b, "hosts", bsoncore.BuildArray(nil, bsoncore.Value{Type: bsoncore.TypeString, Data: bsoncore.AppendString(nil, me)}))
	b = bsoncore.AppendBooleanElement(b, "secondary", false)
	b = bsoncore.AppendStringElement(b, "primary", me)
	b = bsoncore.AppendStringElement(b, "me", me)
	b = bsoncore.AppendInt32Element(b, "maxBsonObjectSize", i32("maxBsonObjectSize", 16<<20))
	b = bsoncore.AppendInt32Element(b, "maxMessageSizeBytes", min(i32("maxMessageSizeBytes", 48_000_000), int32(c.p.opts.MaxMessageSize)))
	b = bsoncore.AppendInt32Element(b, "maxWriteBatchSize", i32("maxWriteBatchSize", 100_000))
	b = bsoncore.AppendDateTimeElement(b, "localTime", time.Now().UnixMilli())
	// Sessions are offered exactly when the database offers them: the
	// proxy passes lsid through to it.
	if v, ok := up.Lookup("logicalSessionTimeoutMinutes").AsInt64OK(); ok {
		b = bsoncore.AppendInt32Element(b, "logicalSessionTimeoutMinutes", int32(v))
	}
	b = bsoncore.AppendInt64Element(b, "connectionId", int64(c.id))
	b = bsoncore.AppendInt32Element(b, "minWireVersion", i32("minWireVersion", 0))
	b = bsoncore.AppendInt32Element(b, "maxWireVersion", i32("maxWireVersion", 0))
	b = bsoncore.AppendBooleanElement(b, "readOnly", false)
	for _, k := range helloKept {
		if v, err := up.LookupErr(k); err == nil {
			b = bsoncore.AppendHeader(b, bsoncore.Type(v.Type), k)
			b = append(b, v.Value...)
		}
	}
	b = bsoncore.AppendDoubleElement(b, "ok", 1)
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}
