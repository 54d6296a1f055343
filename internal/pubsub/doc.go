// Package pubsub is the node's live-channel service: browsers subscribe to
// channels over a websocket (GET /ws) or Server-Sent Events (GET /sse), the
// app server publishes through the admin API (POST /v1/publish), and every
// message reaches every subscriber on every node of the cluster.
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
//	{"type":"subscribe","channel":"demo/thread-1","since":{"epoch":"k3j5x2ab","offset":41}}
//	{"type":"unsubscribe","channel":"demo/thread-1"}
//	{"type":"ping","id":"7"}
//
// Server frames:
//
//	{"type":"subscribed","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab","offset":41}}
//	{"type":"subscribed","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab","offset":44},"recovered":3}
//	{"type":"message","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab","offset":42},"data":{"text":"hi"}}
//	{"type":"unsubscribed","channel":"demo/thread-1"}
//	{"type":"pong","id":"7"}
//	{"type":"error","code":"token_expired","reason":"token expired","channel":"demo/private-42"}
//	{"type":"error","code":"must_reload","reason":"history does not cover the gap: reload the channel's state","channel":"demo/thread-1"}
//	{"type":"reconnect-elsewhere","reason":"node draining"}
//
// A position is where a message sits in its channel on this node: an epoch
// (new whenever the node starts keeping the channel afresh) and an offset
// (1, 2, 3, ...). "subscribed" carries the channel's current position.
// Subscribing with "since" (the position of the last message received)
// replays what was missed: "subscribed" (with "recovered": the number of
// messages replayed), then those messages in order, then live ones. When
// the history (Options.History messages, Options.HistoryTTL) no longer
// covers the gap, or the position is from another epoch (another node, or a
// channel the node had forgotten), the client gets an error "must_reload"
// first: it should fetch the state again from the app server.
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
// Options.MaxSubsPerConn channels, and subscribe plus unsubscribe frames at
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
//	GET /sse?channel=demo/thread-1[&channel=demo/thread-2][&token=...][&since=demo/thread-1@k3j5x2ab:41]
//
// The same frames, one per event, in the event's data (no event name:
// EventSource.onmessage gets all of them). Messages carry the id
// "{channel}@{epoch}:{offset}", so an EventSource reconnects and resumes by
// itself through Last-Event-ID; other channels of a resumed stream get
// must_reload, since their gap is unknown.
//
//	retry: 2000
//
//	data: {"type":"subscribed","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab","offset":41}}
//
//	id: demo/thread-1@k3j5x2ab:42
//	data: {"type":"message","channel":"demo/thread-1","position":{"epoch":"k3j5x2ab","offset":42},"data":{"text":"hi"}}
//
// A stream whose channels are all refused is answered 403 with an error
// frame as the body (EventSource does not retry then). Comment lines
// (": ping") keep proxies from timing the stream out.
//
// # Publishing (admin listener)
//
//	POST /v1/publish  {"channel":"demo/thread-1","data":{"text":"hi"}}
//	-> 200 {"channel":"demo/thread-1","position":{"epoch":"k3j5x2ab","offset":42}}
//	GET /v1/presence/demo/thread-1
//	-> 200 {"channel":"demo/thread-1","local":3,"cluster":10}
//
// data is any JSON (up to Options.MaxMessageBytes once compacted). 400 for
// a bad channel or body, 404 for an unknown tenant, 413 when too large. The
// position is this node's, zero when nobody on this node subscribed to the
// channel recently (nothing is kept for it). Presence counts subscriptions:
// on this node, and in the whole cluster as last reported by peers (every
// Options.PresenceInterval).
//
// # Across the cluster
//
// A publish fans out to the local subscribers and is broadcast once to
// every peer on the mesh topic "pubsub"; a message from a peer is delivered
// to that node's subscribers and never sent on. Delivery between nodes is
// at most once (the mesh's promise): no duplicates; a message lost between
// nodes is not retried. Positions are per node: a client that reconnects to
// another node (after a drain) resumes with must_reload.
//
// # Fan-out
//
// Each message is encoded once (JSON, websocket frame header in front of
// it, SSE form on first use) and the same bytes are queued to every
// subscriber. Queues are bounded (Options.QueueLen); a subscriber whose
// queue is full, or whose socket write is stuck for Options.WriteTimeout,
// is disconnected as a slow consumer, never waited for. No lock is held
// while writing to a socket. A websocket has no writer goroutine while its
// queue is empty: the first frame queued starts one, which writes what is
// queued (several frames in one write when they piled up) and exits.
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
// local socket written), _peer_messages_bad_total.
package pubsub
