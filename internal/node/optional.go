package node

// probes lists the addresses of parts that bind their own sockets.
func (n *Node) probes() []probeAddr {
	var ps []probeAddr
	if n.cfg.DNS.Enabled {
		ps = append(ps, probeAddr{"dns.listen", "udp", n.cfg.DNS.Listen}, probeAddr{"dns.listen", "tcp", n.cfg.DNS.Listen})
	}
	if n.cfg.Mongo.Enabled {
		ps = append(ps, probeAddr{"mongo.listen", "tcp", n.cfg.Mongo.Listen})
	}
	return ps
}

// buildOptionalParts adds the parts beyond the transport and admin.
func (n *Node) buildOptionalParts() error { return nil }
