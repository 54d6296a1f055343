// Package mesh makes identical nodes into a cluster: membership and failure
// detection, a live node map for DNS, and mutually authenticated links that
// carry other parts' messages (pubsub fan-out, replication) between peers.
//
// # Membership
//
// Membership is hashicorp/memberlist (SWIM with indirect probes and the
// Lifeguard extensions), gossip encrypted with AES-GCM from a keyring (the
// first key encrypts, all keys decrypt; see AddGossipKey, UseGossipKey and
// RemoveGossipKey for rotation). Gossip without keys is refused unless it
// binds and advertises loopback addresses only. Seeds come from the
// options; the rest is learned. A node's metadata (id, region, location,
// public addresses, tags, alive/draining state, load, binary and config
// versions, mesh protocol version, link address, boot id, and why it is not ready when it is not,
// see SetReadiness) travels in memberlist's node metadata in a compact
// tag-length-value encoding that tolerates fields from newer versions (see
// Meta; under 100 bytes for a typical node, limit 512).
//
// # The node map
//
// After every membership or metadata change the mesh publishes a new
// nodemap.Map (Mesh implements nodemap.Source): every known member with its
// state and metadata, this node marked Self. States:
//
//   - Alive: the member says it is alive and nothing says otherwise.
//   - Draining: the member announced Drain (or is leaving); DNS must stop
//     handing it out.
//   - Suspect: this node's own last direct probe of the member failed and
//     memberlist has not declared it dead (cleared by the next answered
//     probe). memberlist reports no suspicion to its user, so this is read
//     from its log line "Suspect <name> has failed"; suspicion that this node
//     only heard about through gossip does not show.
//   - Dead: failure detection declared it dead. Dead members stay in the map
//     for DeadRetention (default 1h) or until they rejoin. A member that left
//     with Leave is removed at once instead.
//
// Gossip is authenticated only by the gossip key: anyone holding it can join
// under any name and advertise any address. So the map also says whether a
// member is Verified, which DNS requires before handing it out: its peer
// link is up (the certificate is from the cluster CA and names the member's
// node id, see Peer links), it was made to the process the member's boot id
// announces, and the certificate's IP address SANs include the member's
// public IPv4 and IPv6 (edgenode ca issue --host). Otherwise Unverified says
// why (no link up, and why the last dial was refused; an address the
// certificate does not list). This node counts as verified; New warns when
// its own certificate does not list its public addresses, since its peers
// will leave it out.
//
// # Failure detection bound
//
// With memberlist's algorithm a crashed node is declared dead on every
// other node after about
//
//	first probe      ~1-2 × ProbeInterval   (some live member probes it)
//	+ failed probe    1 × ProbeInterval     (direct, indirect, TCP attempts)
//	+ suspicion       SuspicionMult × max(1, log10 n) × ProbeInterval
//	+ dissemination   ~2 × GossipInterval
//
// Tuning.DetectionBound(n) computes it (using 2 intervals for the first
// probe). The default "wan" profile (ProbeInterval 750 ms, ProbeTimeout
// 400 ms, SuspicionMult 3, GossipInterval 200 ms) gives 4.9 s for 3 nodes
// and 5.6 s for 20; "local" (300 ms probes, for tests) gives 1.9 s for 3.
// It is an expected bound, not a guarantee: an unlucky probe order adds
// intervals, and a suspicion that no other member confirms lasts up to
// SuspicionMaxTimeoutMult (4) times longer. Measured with
// BenchmarkFailureDetection on the shared 2-core test machine (load average
// around 10 from other builds; wan profile; all nodes in one process; 3
// kill rounds each): 3 nodes 3.8 s mean, 4.3 s worst; 20 nodes 4.6 s mean,
// 5.2 s worst. With a separate process saturating one core: 3 nodes 4.0 s
// mean, 4.4 s worst; 20 nodes 5.7 s mean, 7.0 s worst (Lifeguard slows the
// probing of starved nodes, which is what keeps them from false verdicts);
// no false "dead" verdict in any of these runs.
// In a partition each side must declare every member of the other side
// dead, which takes about one probe interval more per extra member.
//
// memberlist forgets dead members after GossipToTheDeadTime, so on its own
// it never heals a partition that lasted longer. The mesh retries dead
// members (and, when alone, the seeds) every RejoinInterval; see
// Tuning.HealBound.
//
// # Peer links
//
// Each pair of nodes shares one QUIC connection (quic-go), mutually
// authenticated with certificates from the cluster CA (package pki). The
// node with the lower id dials, from its own link socket, so the pair never
// holds two connections and the connection's source is the dialer's
// advertised link address. A connection is refused, counted and logged
// when the certificate is not from the CA, when the dialed node's
// certificate names another node, or, for inbound connections, when the
// certificate's node id is not a live member whose advertised link address
// is the address the connection comes from (a stolen key alone is not
// enough).
//
// The handshake also settles the link's protocol version (see Protocol):
// ALPN "edgenode-mesh/N", each node offering its own version and the one
// before it, so nodes one version apart link on the older one's version and
// nodes further apart are refused (link_refused_total{reason=
// "protocol_version"}, a warning naming the peer, both versions and what to
// do, and the peer unverified on the node map). Each node gossips its
// version in its metadata, so a peer known to be too far is not even
// dialed. PeerProtocol tells a part the version of a link.
//
// Every topic uses its own unidirectional stream per direction, so
// messages of a topic arrive in order and a slow handler of one topic
// back-pressures only that stream. A stream carries a header (version,
// topic) and length-prefixed frames (see frame.go); the sender packs many
// frames per write, which is what makes small messages cheap.
//
// Send and Broadcast never block: each peer has a bounded queue (QueueLen
// messages, QueueBytes bytes) drained by that peer's goroutine; a full
// queue drops the message, counts it and returns ErrQueueFull, so a slow or
// dead peer never holds up local work or other peers. Delivery is at most
// once: messages in flight when a connection breaks are lost and counted.
// A broken link is redialed with exponential backoff (100 ms doubling to
// 10 s, jittered); a member that dies or leaves loses its link and queue.
// A node that restarts faster than failure detection is noticed two ways:
// its metadata carries a random boot id, so peers drop the stale connection
// as soon as gossip brings the new one (the queue is kept), and its QUIC
// stateless reset key is derived from its private key, so the new process
// resets packets of the old connections.
// Measured on loopback with BenchmarkLinkThroughput and
// BenchmarkLinkLatency (shared, loaded 2-core machine, so noisy): 200-byte
// messages 0.3-1.5 M/s one way, 64 KiB messages 150-220 MB/s; round trip
// p50 33 µs (p99 0.2 ms) for 200 B and 0.56 ms (p99 4 ms) for 64 KiB.
//
// # Lifecycle
//
// New checks options and certificates; Start binds the sockets and starts
// every goroutine; Drain announces draining; Leave announces the departure,
// closes links with a goodbye and waits for every goroutine. Cancelling
// Start's context stops everything without a goodbye, as a crash would.
//
// # Metrics
//
// edgenode_mesh_members{state}, probe_rtt_seconds{peer} (last direct probe)
// and probe_rtt_distribution_seconds, link_up{peer}, link_queue_depth{peer},
// link_queue_bytes{peer}, link_peer_dropped_total{peer},
// link_dropped_total{reason}, link_messages_total and link_bytes_total
// {topic,direction}, link_connects_total, link_dial_errors_total{peer},
// link_refused_total{reason}, join_attempts_total{result},
// node_map_changes_total and health_score (Lifeguard).
package mesh
