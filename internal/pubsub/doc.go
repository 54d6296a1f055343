// Package pubsub is the node's live-channel service: browsers subscribe to
// channels over a websocket (GET /ws) or Server-Sent Events (GET /sse), the
// app server publishes through the admin API (POST /v1/publish), and every
// message reaches every subscriber on every node of the cluster, also
// around a cut link between two nodes, and a client that reconnects to any
// node resumes where it was.
//
// # Channels and tenants
//
// A channel is "{tenant}/{thread}": the tenant is 1-32 of a-z, 0-9, '-';
// the thread is 1-128 of A-Z, a-z, 0-9, '_', '-', '.', ':' and starts with a
// letter or digit. Names are compared byte for byte; there are no escapes,
// paths or wildcards in channel names. One connection belongs to one tenant
// (the first channel it subscribes to, or ?tenant= on the URL) and can
// never subscribe to another tenant's channel.
//
// Threads matching the tenant's public patterns ("*", "prefix*", exact
// names) are open to anyone; every other thread needs a token from the app
// server: a JWT signed with HS256 (the tenant's secret) or EdDSA (Ed25519,
// the tenant's public key verifies) with the claims
//
//	{"tenant":"demo","channel":"demo/private-42","exp":1767225600}
//
// where channel is a channel or a prefix ("demo/private-*", "demo/*") of
// the same tenant and exp is in Unix seconds. SignHS256 and SignEdDSA make
// such tokens; any JWT library does too. A forged, expired, out-of-scope or
// other tenant's token is refused with an error frame and counted
// (edgenode_pubsub_refusals_total). Browsers' Origin must be in the
// tenant's allow-list when it has one.
//
// # Websocket protocol (GET /ws)
//
// Every frame is a JSON text frame with a "type". Client frames, with an
// optional "id" (up to 64 characters) echoed in the reply:
//
//	{"type":"subscribe","channel":"demo/thread-1"}
//	{"type":"subscribe","channel":"demo/private-42","token":"eyJhbGciOi..."}
//	{"type":"subscribe","channel":"demo/thread-1","since":{"epoch":"k3j5x2ab.41~1767225600","offset":41}}
//	{"type":"unsubscribe","channel":"demo/thread-1"}
//	{"type":"presence","channel":"demo/thread-1","id":"8"}
//	{"type":"ping","id":"7"}
//
// Server frames:
//
//	{"type":"subscribed","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab.41~1767225600","offset":41}}
//	{"type":"subscribed","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab.44~1767225610","offset":44},"recovered":3}
//	{"type":"message","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab.42~1767225601","offset":42},"data":{"text":"hi"}}
//	{"type":"unsubscribed","channel":"demo/thread-1"}
//	{"type":"presence","channel":"demo/thread-1","id":"8","count":10}
//	{"type":"pong","id":"7"}
//	{"type":"error","code":"token_expired","reason":"token expired","channel":"demo/private-42"}
//	{"type":"error","code":"must_reload","reason":"history does not cover the gap: reload the channel's state","channel":"demo/thread-1"}
//	{"type":"reconnect-elsewhere","reason":"node draining"}
//
// "subscribed" carries the channel's current position, every message the
// position after it. Subscribing with "since" (the position of the last
// message received, from any node) replays what was missed: "subscribed"
// (with "recovered": the number of messages replayed), then those messages
// in order, then live ones. When the history no longer covers the gap, the
// client gets an error "must_reload" first: it should fetch the state again
// from the app server. The same error can come later, on a live
// subscription, when messages were lost between nodes (see Across the
// cluster); the subscription goes on after it.
//
// "presence" asks how many subscriptions a channel has in the whole
// cluster (the "cluster" count of GET /v1/presence: this node's, plus the
// peers' as last reported every Options.PresenceInterval). It is answered
// only for a channel the connection is subscribed to, so it needs exactly
// the authorization of the subscription (the tenant's public patterns or a
// token covering the channel) and cannot probe other channels; otherwise
// the reply is the error not_subscribed. The answer is a count, never who:
// subscribers are anonymous to each other and the public listener carries
// no per-user data. SSE has no client-to-server path, so it has no
// presence.
//
// # Positions
//
// A position means the same on every node. Each message gets an id where
// it is published: its stream (the messages one node publishes on one
// channel: a random id, new when that node starts the channel afresh) and
// its sequence number in that stream (1, 2, 3, ...). Every node delivers a
// stream's messages in order, each once; messages of different streams may
// interleave differently on different nodes. So a position is a vector:
// for each stream, the last message received from it; it names exactly the
// messages a subscriber has, whichever node gave it. On the wire it keeps
// the old shape: "epoch" is the vector as text, "{stream}.{seq}" per
// stream joined by '_' ("0" for none), then '~' and the time the position
// was made (Unix seconds), e.g. "k3j5x2ab.41_m2n3b4c5.7~1767225600";
// "offset" is the number of messages the vector accounts for (it grows by
// one with each message). Clients treat positions as opaque and send back
// the last one they got. A position from before positions were
// cluster-wide (a bare epoch) is answered with must_reload.
//
// Streams quiet for longer than HistoryTTL are left out of positions (a
// node publishing again after that starts a new stream), so a position
// stays short: one entry per node that published on the channel lately.
//
// Error codes: bad_frame, unknown_type, binary_frame, bad_channel,
// unknown_tenant, tenant_mismatch, origin_not_allowed, token_required,
// token_invalid, token_expired, token_tenant, token_scope,
// too_many_subscriptions, too_many_channels, rate_limited, not_subscribed,
// must_reload. An error does not end the connection; 64 of them do (close
// 1008).
//
// # Limits
//
// Per client (an IPv4 address, or an IPv6 /64: its owner has 2^64
// addresses to pick from): Options.MaxConnsPerIP websocket and SSE
// connections, over which the handshake is answered 429. Per connection:
// Options.MaxSubsPerConn channels, and subscribe, unsubscribe and presence frames at
// Options.SubscribeRate per second with bursts of Options.SubscribeBurst (a
// token bucket); a frame over the rate is refused with rate_limited and
// not acted on, and, as every error, counts towards the 64 that close the
// connection. Per node: Options.MaxChannels channels, and
// Options.MaxChannelsPerTenant for one tenant. A channel whose subscribers
// have all left is kept for its history (Options.HistoryTTL) so that
// clients coming back recover what they missed, but such idle channels are
// forgotten, the one idle longest first, whenever a new channel needs room
// under a cap; only when every kept channel has subscribers is a subscribe
// to a new channel refused with too_many_channels. So churning through
// channel names leaves at most the caps' worth of state behind.
//
// The server pings every Options.PingInterval (browsers answer by
// themselves) and closes a connection that has sent nothing, not even a
// pong, for 2.5 intervals. Close codes: 1012 draining (after a
// reconnect-elsewhere frame: connect again, DNS sends you to a live node),
// 1008 slow consumer or too many errors, 1009 frame over
// Options.MaxClientFrameBytes, 1007 text that is not UTF-8, 1002 protocol
// violation.
//
// # Server-Sent Events (GET /sse)
//
//	GET /sse?channel=demo/thread-1[&channel=demo/thread-2][&token=...][&since=demo/thread-1@k3j5x2ab.41~1767225600:41]
//
// The same frames, one per event, in the event's data (no event name:
// EventSource.onmessage gets all of them). Messages carry the id
// "{channel}@{epoch}:{offset}", so an EventSource reconnects and resumes by
// itself through Last-Event-ID, on whichever node DNS sends it to; other
// channels of a resumed stream get must_reload, since their gap is unknown.
//
//	retry: 2000
//
//	data: {"type":"subscribed","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab.41~1767225600","offset":41}}
//
//	id: demo/thread-1@k3j5x2ab.42~1767225601:42
//	data: {"type":"message","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab.42~1767225601","offset":42},"data":{"text":"hi"}}
//
// A stream whose channels are all refused is answered 403 with an error
// frame as the body (EventSource does not retry then). Comment lines
// (": ping") keep proxies from timing the stream out.
//
// # Publishing (admin listener)
//
//	POST /v1/publish  {"channel":"demo/thread-1","data":{"text":"hi"}}
//	-> 200 {"channel":"demo/thread-1","position":{"epoch":"k3j5x2ab.42~1767225601","offset":42}}
//	GET /v1/presence/demo/thread-1
//	-> 200 {"channel":"demo/thread-1","local":3,"cluster":10}
//
// data is any JSON (up to Options.MaxMessageBytes once compacted). 400 for
// a bad channel or body, 404 for an unknown tenant, 413 when too large. The
// position is the channel's on this node just after the message: an app
// server that stores it with the state it renders lets clients subscribe
// "since" it. (It names the streams this node knows: with several nodes
// publishing on a channel that this node does not follow, a client
// resuming from it may get the others' latest messages again.) Presence
// counts subscriptions: on this node, and in the whole cluster as last
// reported by peers (every Options.PresenceInterval).
//
// # Across the cluster
//
// Nodes talk over the mesh's peer links, on two topics: MeshTopic
// ("pubsub") for messages, MeshControlTopic ("pubsub-ctl") for the rest.
//
// Interest. A node follows a channel while it has subscribers for it. To
// begin, it sends every peer a sync request that registers its interest;
// each peer registers it and answers, in one critical section, with what it
// has of the channel: the last sequence number of every stream it knows.
// From then on that peer sends the node every message it publishes on the
// channel, and nothing else: a publish goes only to the peers that follow
// its channel, once each, and is never sent on. When the last subscriber
// leaves, the node tells every peer it no longer follows. Every
// Options.DigestInterval (and when a peer appears or restarts) each node
// sends every peer the full list of the channels it follows (8-byte
// hashes): it refreshes what the peer knows (a channel no digest has named
// for three intervals is forgotten, in case the "no longer" was lost), and
// each peer answers with the heads of its own streams of those channels,
// which reveals messages lost on the way.
//
// Relays. Every Options.HeartbeatInterval each node tells every peer it is
// there, which peers it hears, and which it reaches directly. A direct path
// that brings no heartbeat for 3.5 intervals, or whose far end says it
// does not hear us, is down: messages (and every other exchange) for that
// peer go through one peer whose direct paths to both ends work (one hop:
// a relayed message is never relayed again; with none known, through up
// to two peers we reach). What was sent straight to it just before the cut
// was noticed is sent again through the relay. Heartbeats keep probing the
// direct path, which is used again once heartbeats cross it both ways. A
// relay names the node a message comes from and is believed: every node
// holds a certificate of the fleet CA, which lets it publish anything
// anyway.
//
// Order and duplicates. Each node delivers every stream in sequence order,
// each message once: a message that arrives twice (through a relay and, late,
// directly) is dropped; one that arrives before its predecessor waits for
// it. A gap that lasts (a message lost when a link broke, or in a cut) is
// repaired from the publishing node's history (or every peer's, when it
// cannot be reached); when no node has the missing messages any more the
// subscribers get must_reload and the stream goes on after the gap.
//
// The promise. A subscriber receives every message published after its
// "subscribed" position (every message the position does not name), in
// each stream's order, exactly once, for as long as it stays connected;
// and resuming "since" its last position, on any node, it receives exactly
// the messages after it, or must_reload first when no node's history
// covers them any more (Options.History messages, Options.HistoryTTL). The
// first subscriber of a channel on a node gets its "subscribed" once every
// peer it can reach has answered the sync request, or stopped being
// reachable meanwhile (a peer killed as the request went out is not waited
// for once its path is down and no peer reaches it: about 3.5 heartbeats;
// edgenode_pubsub_sync_rounds_unreachable_total), and at most
// Options.SyncTimeout, so the position names what every publisher had
// published by then, and the publishers send it everything after; later
// subscribers of a followed channel are answered at once. A resuming
// subscriber whose position the node's own history does not cover (the
// node followed the channel only lately, or not at all) waits for the
// missing messages to be fetched from the peers. The exceptions: a
// publishing node that could not be reached at all (not even through one
// relay) when a node began to follow a channel learns of it later (from a
// digest), and its messages from meanwhile are delivered only if published
// after the node began to follow, by the publishing node's clock; and the
// last messages a node published before it died, if lost on the way to
// one follower, never reach that one: a gap shows through a later message
// or the publisher's own heads, and a dead publisher sends neither.
//
// Nodes from before this protocol (they broadcast every publish without an
// id and send no heartbeats) get every publish in that old form once they
// have been members for 20 heartbeat intervals without a heartbeat, and
// their publishes are delivered to the subscribers here (outside any
// stream), so a rolling upgrade keeps messages flowing both ways.

// # Fan-out
//
// Each message is encoded once (JSON, websocket frame header in front of
// it, SSE form on first use) and the same bytes are queued to every
// subscriber. Queues are bounded (Options.QueueLen); a subscriber whose
// queue is full, or whose socket write is stuck for Options.WriteTimeout,
// is disconnected as a slow consumer, never waited for. No lock is held
// while writing to a socket. Websockets are written by one worker
// goroutine per CPU (writer.go): the first frame queued to a connection
// puts it on its worker's ready list, and the worker writes everything
// queued for it in one write (one TLS record, one system call), so a
// fan-out to 10,000 subscribers wakes at most one goroutine per CPU. A
// worker stuck 20 ms in one write (a client whose socket buffer is full)
// is replaced by a fresh one that takes over its list
// (_writer_stalls_total), so a stalled client does not hold up the rest.
//
// Where a delivery's server CPU goes (edgebench, 10,000 websocket
// subscribers over TLS, one channel, 10 messages/s, ~170-byte frames,
// profile of the publish phase taken from the admin listener's pprof;
// 2 cores shared with the load tool and other work):
//
//	before (a goroutine started per delivery): 10.6-11.1 µs
//	  write(2) 59%, goroutine start/exit and scheduling ~15%, the
//	  fan-out loop under the channel lock 12% (mostly those goroutine
//	  starts), locks 6%, async preemption 6%, AES-GCM and TLS records 5%
//	after (workers): 4.7-6.4 µs
//	  write(2) 67% (~3.2 µs), async preemption 9%, AES-GCM and TLS
//	  records 8% (seal 7%), locks 4.5%, the rest under 2% each
//
// The floor is the write system call: one per delivery per connection,
// since every subscriber has its own socket and its own TLS keys, and at
// one channel x 10 messages/s no two messages are ever queued to one
// connection at once (frames that do pile up already share a write). On
// loopback that call also runs the receiving side's TCP input and wakes
// the reader. So one message to 10,000 subscribers costs ~47 ms of server
// CPU, and the load tool another ~39 ms (3.9 µs per frame read: TLS
// decryption, two reads per frame, the scheduler): on 2 cores the last
// subscriber of a message cannot be served before ~43 ms even on an
// otherwise idle machine, which is why p99 < 50 ms needs the machine to
// itself.
//
// After the handshake (gorilla/websocket's Upgrader) the websocket is
// served by this package's own framing, so that an idle connection holds no
// goroutine and no buffer: on Linux one epoll instance watches idle sockets
// and starts a short-lived reader when one becomes readable. What stays per
// idle connection is the TLS state, the socket and a few hundred bytes of
// bookkeeping.
//
// # Metrics
//
// edgenode_pubsub_connections{transport}, _subscriptions, _channels,
// _publishes_total{source}, _deliveries_total, _dropped_total{reason},
// _disconnects_total{reason}, _refusals_total{reason},
// _recoveries_total{result}, _fanout_seconds (publish accepted to the last
// local socket written), _writer_stalls_total (websocket writer workers
// replaced behind a stuck write), _peer_messages_bad_total; between nodes:
// _peer_sent_total{peer,path} (messages published here and sent to a peer
// that follows the channel, directly or through a relay),
// _peer_direct{peer} (1: the direct path works), _peer_received_total{result}
// (accepted, duplicate, unwanted, overflow), _relayed_total (forwarded for
// other nodes), _sync_rounds_total{kind} (follow, fetch, repair) and
// _gaps_total{result} (repaired, lost). The mesh counts bytes per topic:
// edgenode_mesh_link_bytes_total{topic="pubsub"}.
package pubsub
