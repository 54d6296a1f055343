package mesh

import (
	"fmt"
	"strconv"
	"strings"
)

// Protocol is the version of the mesh protocol this binary speaks: the peer
// links (TLS ALPN, stream headers, frames) and everything carried over
// them, pubsub fan-out and replication messages included. Version 1 is the
// protocol of the releases before versions were negotiated (their ALPN was
// already "edgenode-mesh/1"); version 2 added the negotiation itself and
// gossips the version in the node's metadata.
//
// The compatibility rule: a node speaks its own version and the one before
// it, so two nodes link when their versions are at most one apart, and
// speak the lower of the two. A node two or more versions away is refused,
// counted (link_refused_total{reason="protocol_version"}) and logged with
// what to do. A rolling upgrade therefore moves one version at a time: every
// node runs version N or N+1 before any runs N+2.
//
// When a message carried over a link changes, the change gets a new
// protocol version, the sender picks the encoding from the version of the
// link to the peer (PeerProtocol), and the receiver decodes what that link
// version defines; the golden files of each version's messages (testdata in
// the packages that own them) keep an old version's encoding from changing
// by accident.
const Protocol = 2

// alpnPrefix names the link protocol in TLS ALPN, so a QUIC client of
// another kind (HTTP/3) can never be mistaken for a peer.
const alpnPrefix = "edgenode-mesh/"

// alpnFor is the ALPN protocol ID of mesh protocol version v.
func alpnFor(v int) string { return alpnPrefix + strconv.Itoa(v) }

// offered is what a node of version v offers in ALPN, preferred first: its
// own version and the one before it. The TLS server picks the first of its
// list the client offers, so two nodes one version apart settle on the
// older node's version, and nodes of one version on that version.
func offered(v int) []string {
	if v <= 1 {
		return []string{alpnFor(1)}
	}
	return []string{alpnFor(v), alpnFor(v - 1)}
}

// parseALPN returns the mesh protocol version an ALPN protocol ID names.
func parseALPN(s string) (int, bool) {
	rest, ok := strings.CutPrefix(s, alpnPrefix)
	if !ok {
		return 0, false
	}
	v, err := strconv.Atoi(rest)
	if err != nil || v < 1 || strconv.Itoa(v) != rest {
		return 0, false
	}
	return v, true
}

// compatible reports whether nodes of versions a and b link.
func compatible(a, b int) bool { return a-b <= 1 && b-a <= 1 }

// newest is the highest mesh version among ALPN protocol IDs (0: none is a
// mesh protocol).
func newest(protos []string) int {
	n := 0
	for _, p := range protos {
		if v, ok := parseALPN(p); ok && v > n {
			n = v
		}
	}
	return n
}

// versionAdvice is what the refusal of a peer of version theirs by a node
// of version ours tells the operator to do.
func versionAdvice(peer string, ours, theirs int) string {
	if theirs > ours {
		return fmt.Sprintf("peer %s speaks mesh protocol %d, this node %d (nodes link only one version apart): upgrade this node to a release of protocol %d or %d, one release at a time, before %s joins",
			peer, theirs, ours, theirs-1, theirs, peer)
	}
	return fmt.Sprintf("peer %s speaks mesh protocol %d, this node %d (nodes link only one version apart): upgrade %s to a release of protocol %d or %d first; upgrade one release at a time",
		peer, theirs, ours, peer, ours-1, ours)
}
