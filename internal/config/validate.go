package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"regexp"
	"strings"
	"time"
)

var nodeIDRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Validate reports every problem in c. It reads the files c names (to check
// they exist and are readable) and never writes anything.
func (c *Config) Validate() error {
	var ps Problems
	c.validate(&ps)
	return ps.err()
}

// validate checks each section on its own, then what spans sections: the
// fleet's TLS storage, the demo's needs and the listening addresses.
func (c *Config) validate(ps *Problems) {
	c.Node.validate(ps)
	c.Log.validate(ps)
	c.HTTPS.validate(ps)
	c.Admin.validate(ps)
	if c.DNS.Enabled {
		c.DNS.validate(ps)
	}
	if c.Mesh.Enabled {
		c.Mesh.validate(ps)
	}
	if c.Mongo.Enabled {
		c.Mongo.validate(ps)
	}
	if c.FleetStore() == FleetStorageMongo {
		c.validateFleetMongo(ps)
	}
	if c.PubSub.Enabled {
		c.PubSub.validate(ps)
	}
	c.validateWeb(ps)
	if c.CDN.Enabled {
		c.CDN.validate(ps)
	}
	c.validateListeners(ps)
}

func (n *Node) validate(ps *Problems) {
	if !nodeIDRe.MatchString(n.ID) {
		ps.add("node.id", "%q is not a valid node id: use 1-63 lower-case letters, digits and '-' (it becomes a DNS label)", n.ID)
	}
	if n.DataDir == "" {
		ps.add("node.data_dir", "must not be empty: a folder for certificates, caches and the op log, e.g. ./data")
	}
	if n.DrainTimeout <= 0 || n.DrainTimeout > 10*time.Minute {
		ps.add("node.drain_timeout", "%v is out of range: want a duration between 1s and 10m, e.g. 15s", n.DrainTimeout)
	}
	if n.Latitude < -90 || n.Latitude > 90 {
		ps.add("node.latitude", "%v is out of range: want degrees between -90 and 90", n.Latitude)
	}
	if n.Longitude < -180 || n.Longitude > 180 {
		ps.add("node.longitude", "%v is out of range: want degrees between -180 and 180", n.Longitude)
	}
	checkIP(ps, "node.public_ipv4", n.PublicIPv4, true)
	checkIP(ps, "node.public_ipv6", n.PublicIPv6, false)
}

func (l *Log) validate(ps *Problems) {
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		ps.add("log.level", "%q is not a level: want debug, info, warn or error", l.Level)
	}
	switch l.Format {
	case "text", "json":
	default:
		ps.add("log.format", "%q is not a format: want text or json", l.Format)
	}
}

func (h *HTTPS) validate(ps *Problems) {
	checkAddr(ps, "https.listen", h.Listen, true)
	for i, cert := range h.Certificates {
		cert.validate(ps, fmt.Sprintf("https.certificates[%d]", i))
	}
	if h.CertCheckInterval < 0 {
		ps.add("https.cert_check_interval", "must not be negative: 0 turns file watching off, e.g. 5s")
	}
	if h.AppServer != "" {
		u, err := url.Parse(h.AppServer)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			ps.add("https.app_server", "%q is not an http(s) URL: want e.g. http://127.0.0.1:3000", h.AppServer)
		}
	}
	h.Limits.validate(ps)
	switch h.HTTP2Server {
	case "", HTTP2Edgenode, HTTP2NetHTTP:
	default:
		ps.add("https.http2_server", "%q is not a server: want %q (the default) or %q", h.HTTP2Server, HTTP2Edgenode, HTTP2NetHTTP)
	}
	if h.AltSvcPort < 0 || h.AltSvcPort > 65535 {
		ps.add("https.alt_svc_port", "%d is not a port: want 0 (the listen port) to 65535", h.AltSvcPort)
	}
	if h.SessionTickets.Rotation < time.Minute {
		ps.add("https.session_tickets.rotation", "%v is too short: want e.g. 24h", h.SessionTickets.Rotation)
	}
	if h.ACME.Enabled {
		h.ACME.validate(ps)
	}
}

func (c *Certificate) validate(ps *Problems, p string) {
	checkFile(ps, p+".cert_file", c.CertFile, true)
	switch {
	case c.KeyFile != "" && !c.Key.IsZero():
		ps.add(p+".key", "give the private key once: key_file or key, not both")
	case c.KeyFile != "":
		checkFile(ps, p+".key_file", c.KeyFile, true)
	default:
		checkSecret(ps, p+".key_file", c.Key, true)
	}
}

func (l *Limits) validate(ps *Problems) {
	if l.MaxHeaderBytes < 1024 || l.MaxHeaderBytes > 16<<20 {
		ps.add("https.limits.max_header_bytes", "%d is out of range: want between 1KiB and 16MiB, e.g. 64KiB", l.MaxHeaderBytes)
	}
	if l.MaxBodyBytes < 0 {
		ps.add("https.limits.max_body_bytes", "must not be negative: want e.g. 10MiB (0 means no limit)")
	}
	if l.ReadHeaderTimeout <= 0 {
		ps.add("https.limits.read_header_timeout", "must be positive: want e.g. 10s")
	}
	if l.IdleTimeout <= 0 {
		ps.add("https.limits.idle_timeout", "must be positive: want e.g. 120s")
	}
	if l.MaxConnsPerIP < 0 {
		ps.add("https.limits.max_conns_per_ip", "must not be negative: want e.g. 256 (0 means no limit)")
	}
	if l.MaxWebsocketMessageBytes < 1024 || l.MaxWebsocketMessageBytes > 256<<20 {
		ps.add("https.limits.max_websocket_message_bytes", "%d is out of range: want between 1KiB and 256MiB, e.g. 1MiB", l.MaxWebsocketMessageBytes)
	}
}

func (a *ACME) validate(ps *Problems) {
	if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" {
		ps.add("https.acme.ca", "%q is not an https ACME directory URL", a.CA)
	}
	if len(a.Names) == 0 && a.OnDemand.Ask == "" {
		ps.add("https.acme", "needs names or on_demand.ask, else there is nothing to order")
	}
	for i, n := range a.Names {
		if strings.ContainsAny(n, "*/: ") || net.ParseIP(n) != nil || !strings.Contains(n, ".") {
			ps.add(fmt.Sprintf("https.acme.names[%d]", i), "%q is not a host name ACME can issue for (no wildcards, no IPs)", n)
		}
	}
	if a.RenewCheckInterval <= 0 {
		ps.add("https.acme.renew_check_interval", "must be positive (certificates would never renew): want e.g. 10m")
	}
	if a.OnDemand.Ask != "" {
		a.OnDemand.validate(ps)
	}
	if a.ChallengePort < 0 || a.ChallengePort > 65535 {
		ps.add("https.acme.challenge_port", "%d is not a port", a.ChallengePort)
	}
}

// validate checks on-demand issuance, which a non-empty ask turns on.
func (o *OnDemand) validate(ps *Problems) {
	if u, err := url.Parse(o.Ask); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		ps.add("https.acme.on_demand.ask", "%q is not an http(s) URL", o.Ask)
	}
	// The issuer has a bound of its own for each: none cannot be had.
	if o.PerClient <= 0 {
		ps.add("https.acme.on_demand.per_client", "must be positive (asks per client address per window): want e.g. 5")
	}
	if o.Global <= 0 {
		ps.add("https.acme.on_demand.global", "must be positive (asks per window in all): want e.g. 60")
	}
	if o.Window <= 0 {
		ps.add("https.acme.on_demand.window", "must be positive: want e.g. 1m")
	}
	if o.MaxNames <= 0 {
		ps.add("https.acme.on_demand.max_names", "must be positive (on-demand names the leader manages): want e.g. 1000")
	}
	if o.Wait <= 0 {
		ps.add("https.acme.on_demand.wait", "must be positive (how long a handshake waits for a new certificate): want e.g. 8s")
	}
}

func (a *Admin) validate(ps *Problems) {
	checkAddr(ps, "admin.listen", a.Listen, true)
	checkSecret(ps, "admin.token", a.Token, false)
	checkNotBlank(ps, "admin.token", a.Token)
}

func (d *DNS) validate(ps *Problems) {
	checkAddr(ps, "dns.listen", d.Listen, true)
	if d.GeoIP != "" {
		checkFile(ps, "dns.geoip_database", d.GeoIP, false)
	}
	if d.SlackKM < 0 {
		ps.add("dns.slack_km", "must not be negative: want e.g. 200")
	}
	for i, z := range d.Zones {
		z.validate(ps, fmt.Sprintf("dns.zones[%d]", i))
	}
	for i, dn := range d.Dynamic {
		dn.validate(ps, fmt.Sprintf("dns.dynamic[%d]", i), d.Zones)
	}
	for i, o := range d.Overrides {
		o.validate(ps, fmt.Sprintf("dns.overrides[%d]", i))
	}
	for i, sn := range d.Nodes {
		sn.validate(ps, fmt.Sprintf("dns.nodes[%d]", i))
	}
	if d.RRL.Enabled && d.RRL.ResponsesPerSec <= 0 {
		ps.add("dns.rate_limit.responses_per_second", "must be positive when rate limiting is enabled: want e.g. 50 (rate_limit.enabled: false turns it off)")
	}
	if d.RRL.Slip < 0 {
		ps.add("dns.rate_limit.slip", "must not be negative: want e.g. 2 (0: never send a truncated answer, drop every limited one)")
	}
	if d.TCPMaxConnsPerIP < 0 {
		ps.add("dns.tcp_max_conns_per_ip", "must not be negative: want e.g. 16 (0 means no limit)")
	}
	d.Measured.validate(ps)
}

func (m *Measured) validate(ps *Problems) {
	const off = " (measured.enabled: false turns measuring off)"
	if !(m.SampleRate > 0 && m.SampleRate <= 1) {
		ps.add("dns.measured.sample_rate", "%v is out of range: want a share of page loads in (0, 1], e.g. 0.05%s", m.SampleRate, off)
	}
	if m.MinSamples < 1 || m.MinSamples > 1000000 {
		ps.add("dns.measured.min_samples", "%d is out of range: want 1 to 1000000, e.g. 20%s", m.MinSamples, off)
	}
	if m.HalfLife < time.Minute || m.HalfLife > 30*24*time.Hour {
		ps.add("dns.measured.half_life", "%v is out of range: want 1m to 720h, e.g. 1h%s", m.HalfLife, off)
	}
	if m.MaxNetworks < 1 || m.MaxNetworks > 1000000 {
		ps.add("dns.measured.max_networks", "%d is out of range: want 1 to 1000000, e.g. 10000 (about 2.5 KiB each at worst)%s", m.MaxNetworks, off)
	}
}

func (z *Zone) validate(ps *Problems, p string) {
	if !strings.HasSuffix(z.Origin, ".") || len(z.Origin) < 2 {
		ps.add(p+".origin", "%q is not a fully qualified zone: want e.g. example.com. (with the final dot)", z.Origin)
	}
	if len(z.NS) == 0 {
		ps.add(p+".ns", "needs at least one name server, e.g. [ns1.example.com.]")
	}
	// A TTL of 0 ("do not cache") is not supported: leave the key out for
	// the default.
	if z.TTL <= 0 {
		ps.add(p+".ttl", "must be positive: want e.g. 1h (left out: 1h)")
	}
	if z.NegativeTTL <= 0 {
		ps.add(p+".negative_ttl", "must be positive: want e.g. 1m (left out: 1m)")
	}
	for j, r := range z.Records {
		rp := fmt.Sprintf("%s.records[%d]", p, j)
		if r.TTL <= 0 {
			ps.add(rp+".ttl", "must be positive: want e.g. 5m (left out: 5m)")
		}
		switch strings.ToUpper(r.Type) {
		case "A", "AAAA", "CNAME", "TXT", "MX", "CAA":
		default:
			ps.add(rp+".type", "%q is not supported: want A, AAAA, CNAME, TXT, MX or CAA", r.Type)
		}
		if r.Name == "" || r.Value == "" {
			ps.add(rp, "needs a name (\"@\" for the apex) and a value")
		}
	}
}

func (dn *DynamicName) validate(ps *Problems, p string, zones []Zone) {
	if !strings.HasSuffix(dn.Name, ".") {
		ps.add(p+".name", "%q is not fully qualified: want e.g. widget.example.com.", dn.Name)
	} else if !inAnyZone(dn.Name, zones) {
		ps.add(p+".name", "%q is in none of dns.zones: add its zone", dn.Name)
	}
	if dn.Count < 1 || dn.Count > 16 {
		ps.add(p+".count", "%d is out of range: want 1 to 16 (left out: 2)", dn.Count)
	}
	if dn.TTL <= 0 || dn.TTL > 24*time.Hour {
		ps.add(p+".ttl", "%v is out of range: want 1s to 24h, e.g. 30s (left out: 30s)", dn.TTL)
	}
}

func (o *GeoOverride) validate(ps *Problems, p string) {
	if _, err := netip.ParsePrefix(o.CIDR); err != nil {
		ps.add(p+".cidr", "%q is not a CIDR: want e.g. 192.0.2.0/24", o.CIDR)
	}
	if (o.Latitude == nil) != (o.Longitude == nil) {
		ps.add(p, "give latitude and longitude together")
	}
	if o.Latitude == nil && o.Country == "" && o.Continent == "" {
		ps.add(p, "needs latitude/longitude, a country or a continent")
	}
}

func (sn *StaticNode) validate(ps *Problems, p string) {
	if !nodeIDRe.MatchString(sn.ID) {
		ps.add(p+".id", "%q is not a valid node id", sn.ID)
	}
	checkIP(ps, p+".ipv4", sn.IPv4, true)
	checkIP(ps, p+".ipv6", sn.IPv6, false)
	if sn.IPv4 == "" && sn.IPv6 == "" {
		ps.add(p, "needs ipv4 or ipv6 (or both)")
	}
}

func (m *Mesh) validate(ps *Problems) {
	checkAddr(ps, "mesh.bind", m.Bind, true)
	checkAddr(ps, "mesh.link_listen", m.LinkListen, true)
	if m.Advertise != "" {
		checkAddr(ps, "mesh.advertise", m.Advertise, false)
	}
	for i, s := range m.Seeds {
		checkAddr(ps, fmt.Sprintf("mesh.seeds[%d]", i), s, false)
	}
	for i, k := range m.GossipKeys {
		checkSecret(ps, fmt.Sprintf("mesh.gossip_keys[%d]", i), k, false)
	}
	switch m.Profile {
	case "wan", "lan", "local":
	default:
		ps.add("mesh.profile", "%q is not a profile: want wan, lan or local", m.Profile)
	}
	checkFile(ps, "mesh.ca_cert", m.CACert, true)
	checkFile(ps, "mesh.cert", m.Cert, true)
	checkFile(ps, "mesh.key_file", m.KeyFile, true)
	if m.QueueLength <= 0 {
		ps.add("mesh.queue_length", "must be positive: want e.g. 4096")
	}
}

func (m *Mongo) validate(ps *Problems) {
	checkAddr(ps, "mongo.listen", m.Listen, true)
	if !m.Upstream.IsZero() {
		checkSecret(ps, "mongo.upstream", m.Upstream, false)
		if m.Upstream.Inline != "" && !strings.HasPrefix(m.Upstream.Inline, "mongodb://") && !strings.HasPrefix(m.Upstream.Inline, "mongodb+srv://") {
			ps.add("mongo.upstream", "is not a MongoDB URI: want mongodb://HOST:PORT/ (or leave empty for the embedded database)")
		}
	}
	if m.Advertise != "" {
		checkAddr(ps, "mongo.advertise", m.Advertise, false)
		if _, port, err := net.SplitHostPort(m.Advertise); err == nil && port == "0" {
			ps.add("mongo.advertise", "port 0 cannot be reached: want the proxy's HOST:PORT as the app dials it, e.g. 10.0.0.5:27018")
		}
	}
	if m.SetName == "" || strings.ContainsAny(m.SetName, " /\\,?#@") {
		ps.add("mongo.set_name", "%q is not a replica set name: want letters, digits, '-', '_' or '.', e.g. edgenode", m.SetName)
	}
	for i, p := range m.Replicate {
		checkNamespacePattern(ps, fmt.Sprintf("mongo.replicate[%d]", i), p)
	}
	for i, p := range m.LocalOnly {
		checkNamespacePattern(ps, fmt.Sprintf("mongo.local_only[%d]", i), p)
	}
	if m.MaxConns <= 0 {
		ps.add("mongo.max_conns", "must be positive: want e.g. 4096")
	}
	if m.DocCacheBytes < 0 {
		ps.add("mongo.doc_cache_bytes", "must not be negative: want e.g. 64MiB (0: no document cache)")
	}
	if m.MaxDocumentBytes < 64<<10 || m.MaxDocumentBytes > 15<<19 {
		ps.add("mongo.max_document_bytes", "%d is out of range: want 65536 to 7864320 (7.5 MiB: replication carries a document in one 8 MiB mesh message)", int64(m.MaxDocumentBytes))
	}
	if m.MaxLag < 0 {
		ps.add("mongo.max_lag", "must not be negative: want e.g. 30s (0: never report not ready for lag)")
	}
	if m.LogRetention < 0 {
		ps.add("mongo.log_retention", "must not be negative: want e.g. 10m (0: trim own ops once every peer has them)")
	}
	if m.ForgetPeerAfter < time.Minute {
		ps.add("mongo.forget_peer_after", "%v is too short: want at least 1m, e.g. 24h", m.ForgetPeerAfter)
	}
	if m.MaxClockSkew < time.Second || m.MaxClockSkew > 24*time.Hour {
		ps.add("mongo.max_clock_skew", "%v is out of range: want 1s (replication's stable margin) to 24h, e.g. 1m", m.MaxClockSkew)
	}
	if m.RetryRecordsBytes < 0 {
		ps.add("mongo.retry_records_bytes", "must not be negative: want e.g. 64MiB (0: no bound)")
	}
	if m.ClientMessageTimeout <= 0 {
		ps.add("mongo.client_message_timeout", "must be positive (a message once begun must arrive within it): want e.g. 30s")
	}
	validateArchive(ps, &m.Archive)
	if m.ClientIdleTimeout < 0 {
		ps.add("mongo.client_idle_timeout", "must not be negative: want e.g. 30m (0: never close idle clients)")
	}
}

// validateFleetMongo checks what https.fleet_storage "mongo" needs: the
// Mongo layer, the fleet's collection replicated, and a fleet secret that
// every clone shares.
func (c *Config) validateFleetMongo(ps *Problems) {
	if !c.Mongo.Enabled {
		ps.add("https.fleet_storage", "%q needs mongo.enabled: true (the replicated collection %s); or name a folder the clones share", FleetStorageMongo, FleetNamespace)
	}
	for i, p := range c.Mongo.LocalOnly {
		if ok, _ := path.Match(p, FleetNamespace); ok || p == "*" {
			ps.add(fmt.Sprintf("mongo.local_only[%d]", i), "%q covers %s, where the fleet keeps its TLS material (https.fleet_storage: mongo): it must replicate", p, FleetNamespace)
		}
	}
	switch sec := c.HTTPS.FleetSecret; {
	case sec.IsZero() && c.Mesh.Enabled:
		ps.add("https.fleet_secret", "is required with a mesh and https.fleet_storage mongo: every clone needs the same secret to read the fleet's TLS material; "+
			"give at least %d random characters inline, as {file: PATH} or as {env: NAME} (e.g. head -c 32 /dev/urandom | base64)", MinFleetSecretLen)
	case !sec.IsZero():
		checkSecret(ps, "https.fleet_secret", sec, true)
		if v, err := sec.Resolve(); err == nil && len(v) < MinFleetSecretLen {
			ps.add("https.fleet_secret", "is %d characters long: want at least %d random ones (e.g. head -c 32 /dev/urandom | base64)", len(v), MinFleetSecretLen)
		}
	}
}

func (p *PubSub) validate(ps *Problems) {
	seen := map[string]bool{}
	for i, t := range p.Tenants {
		key := fmt.Sprintf("pubsub.tenants[%d]", i)
		if !nodeIDRe.MatchString(t.Name) {
			ps.add(key+".name", "%q is not a tenant name: lower-case letters, digits and '-'", t.Name)
		}
		if seen[t.Name] {
			ps.add(key+".name", "tenant %q appears twice", t.Name)
		}
		seen[t.Name] = true
		checkSecret(ps, key+".secret", t.Secret, false)
	}
	if p.History < 0 {
		ps.add("pubsub.history", "must not be negative: want e.g. 100 (0: keep none)")
	}
	if p.HistoryTTL <= 0 {
		ps.add("pubsub.history_ttl", "must be positive: want e.g. 5m")
	}
	if p.MaxMessageBytes <= 0 {
		ps.add("pubsub.max_message_bytes", "must be positive: want e.g. 65536")
	}
	if p.MaxSubsPerConn <= 0 {
		ps.add("pubsub.max_subscriptions_per_conn", "must be positive: want e.g. 100")
	}
	if p.MaxConnsPerIP < 0 {
		ps.add("pubsub.max_conns_per_ip", "must not be negative: want e.g. 256 (0 means no limit)")
	}
	if p.QueueLen <= 0 {
		ps.add("pubsub.queue_length", "must be positive (a queue of none would disconnect every client): want e.g. 256")
	}
	if p.MaxChannels <= 0 {
		ps.add("pubsub.max_channels", "must be positive: want e.g. 100000")
	}
	if p.MaxChannelsPerTenant <= 0 || p.MaxChannelsPerTenant > p.MaxChannels {
		ps.add("pubsub.max_channels_per_tenant", "%d is out of range: want between 1 and max_channels (%d), e.g. 50000", p.MaxChannelsPerTenant, p.MaxChannels)
	}
	if !(p.SubscribeRate >= 0) {
		ps.add("pubsub.subscribe_rate", "must not be negative (frames per second): want e.g. 10 (0 means no limit)")
	}
	if p.SubscribeRate != 0 && p.SubscribeBurst < 1 {
		ps.add("pubsub.subscribe_burst", "must be at least 1: want e.g. 200 (twice max_subscriptions_per_conn lets a client resubscribe at once)")
	}
	if p.PingInterval < time.Second {
		ps.add("pubsub.ping_interval", "%v is too short: want e.g. 25s", p.PingInterval)
	}
}

// validateWeb checks the built-in pages; the demo needs the Mongo proxy
// and a pubsub tenant.
func (c *Config) validateWeb(ps *Problems) {
	if c.Web.Status && c.Web.StatusInterval < 100*time.Millisecond {
		ps.add("web.status_interval", "%v is too short: want e.g. 2s", c.Web.StatusInterval)
	}
	d := c.Web.Demo
	if !d.Enabled {
		return
	}
	if !c.Mongo.Enabled || !c.PubSub.Enabled {
		ps.add("web.demo.enabled", "the demo needs mongo.enabled and pubsub.enabled")
	}
	if d.Database == "" || strings.ContainsAny(d.Database, "./\\ \"$") {
		ps.add("web.demo.database", "%q is not a database name", d.Database)
	}
	found := false
	for _, t := range c.PubSub.Tenants {
		found = found || t.Name == d.Tenant
	}
	if !found {
		ps.add("web.demo.tenant", "%q is not one of pubsub.tenants", d.Tenant)
	}
}

func (d *CDN) validate(ps *Problems) {
	if !strings.HasPrefix(d.Prefix, "/") || !strings.HasSuffix(d.Prefix, "/") || len(d.Prefix) < 3 {
		ps.add("cdn.prefix", "%q is not a route prefix: want e.g. /media/", d.Prefix)
	}
	if d.MaxBytes < 1<<20 {
		ps.add("cdn.max_bytes", "%d is too small: want at least 1MiB, e.g. 10GiB", d.MaxBytes)
	}
	if d.MaxEntries <= 0 {
		ps.add("cdn.max_entries", "must be positive: want e.g. 100000")
	}
	if d.MaxObjectBytes <= 0 {
		ps.add("cdn.max_object_bytes", "must be positive: want e.g. 64MiB")
	}
	if d.TTL <= 0 {
		ps.add("cdn.ttl", "must be positive: want e.g. 1m")
	}
	if d.StaleWhileRevalidate < 0 {
		ps.add("cdn.stale_while_revalidate", "must not be negative: want e.g. 10m (0: never serve stale)")
	}
	if d.NegativeTTL < 0 {
		ps.add("cdn.negative_ttl", "must not be negative: want e.g. 10s (0: do not remember a 404)")
	}
	if d.OriginTimeout <= 0 {
		ps.add("cdn.origin_timeout", "must be positive: want e.g. 10s")
	}
	if d.MemoryBytes < 0 {
		ps.add("cdn.memory_bytes", "must not be negative: want e.g. 64MiB (0: no memory tier)")
	}
	if d.MemoryMaxObjectBytes <= 0 {
		ps.add("cdn.memory_max_object_bytes", "must be positive: want e.g. 64KiB")
	} else if d.MemoryBytes > 0 && d.MemoryMaxObjectBytes > d.MemoryBytes/16 {
		ps.add("cdn.memory_max_object_bytes", "%d is more than a sixteenth of cdn.memory_bytes (%d): want at most %d, or a larger memory_bytes",
			d.MemoryMaxObjectBytes, d.MemoryBytes, d.MemoryBytes/16)
	}
	d.Origin.validate(ps)
	if d.PeerFill.Enabled {
		checkAddr(ps, "cdn.peer_fill.listen", d.PeerFill.Listen, true)
		if d.PeerFill.FirstByteTimeout <= 0 {
			ps.add("cdn.peer_fill.first_byte_timeout", "must be positive: want e.g. 1s")
		}
	}
}

// PeerFillActive reports whether the node runs the peer listener and
// fills cache misses from peers: cdn.peer_fill.enabled, with the CDN and
// the mesh on (the peers are the mesh's verified nodes and the transport
// is authenticated by its node certificates) and an S3 origin. A folder
// origin is local disk, cheaper to read than a peer, and each node's own,
// so a peer's copy could differ from it: peer fill stays off there.
func (c *Config) PeerFillActive() bool {
	s3 := c.CDN.Origin.S3.Bucket != "" || len(c.CDN.Origin.S3.Buckets) > 0
	return c.CDN.Enabled && c.CDN.PeerFill.Enabled && c.Mesh.Enabled && s3
}

func (o *Origin) validate(ps *Problems) {
	s3 := o.S3.Bucket != "" || len(o.S3.Buckets) > 0
	if s3 && o.Dir != "" {
		ps.add("cdn.origin", "give one origin: dir or s3, not both")
	}
	if !s3 {
		return
	}
	if o.S3.Endpoint != "" {
		if u, err := url.Parse(o.S3.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			ps.add("cdn.origin.s3.endpoint", "%q is not an http(s) URL", o.S3.Endpoint)
		}
	}
	checkSecret(ps, "cdn.origin.s3.access_key_id", o.S3.AccessKeyID, false)
	checkSecret(ps, "cdn.origin.s3.secret_access_key", o.S3.SecretAccessKey, !o.S3.AccessKeyID.IsZero())
}

// A listener is one socket a node binds: its config key, its address and
// whether it is TCP or UDP.
type listener struct{ key, network, addr string }

// listeners lists the sockets c makes the node bind. mesh.bind and
// dns.listen are TCP and UDP; mesh.link_listen is UDP (QUIC); HTTP/3 is UDP
// on the https.listen address.
func (c *Config) listeners() []listener {
	ls := []listener{{"https.listen", "tcp", c.HTTPS.Listen}}
	if c.HTTPS.HTTP3 {
		ls = append(ls, listener{"https.listen", "udp", c.HTTPS.Listen})
	}
	ls = append(ls, listener{"admin.listen", "tcp", c.Admin.Listen})
	if c.DNS.Enabled {
		ls = append(ls, listener{"dns.listen", "udp", c.DNS.Listen}, listener{"dns.listen", "tcp", c.DNS.Listen})
	}
	if c.Mongo.Enabled {
		ls = append(ls, listener{"mongo.listen", "tcp", c.Mongo.Listen})
	}
	if c.Mesh.Enabled {
		ls = append(ls, listener{"mesh.bind", "udp", c.Mesh.Bind}, listener{"mesh.bind", "tcp", c.Mesh.Bind},
			listener{"mesh.link_listen", "udp", c.Mesh.LinkListen})
	}
	if c.PeerFillActive() {
		ls = append(ls, listener{"cdn.peer_fill.listen", "tcp", c.CDN.PeerFill.Listen})
	}
	return ls
}

// validateListeners reports two listeners of one protocol on one port whose
// addresses overlap: a mistake the kernel would report later, and less
// clearly. A TCP and a UDP socket may share a port.
func (c *Config) validateListeners(ps *Problems) {
	type clash struct {
		a, b     listener
		networks []string
	}
	var clashes []*clash
	byPair := map[[2]string]*clash{}
	ls := c.listeners()
	for i, a := range ls {
		for _, b := range ls[:i] {
			if a.key == b.key || a.network != b.network || !overlap(a.addr, b.addr) {
				continue
			}
			pair := [2]string{b.key, a.key}
			if byPair[pair] == nil {
				byPair[pair] = &clash{a: a, b: b}
				clashes = append(clashes, byPair[pair])
			}
			byPair[pair].networks = append(byPair[pair].networks, a.network)
		}
	}
	for _, x := range clashes {
		nets := strings.Join(x.networks, " and ")
		if x.a.addr == x.b.addr {
			ps.add(x.a.key, "%s is already used by %s (%s): give each listener its own port", x.a.addr, x.b.key, nets)
		} else {
			ps.add(x.a.key, "%s overlaps %s %s (%s): give each listener its own port", x.a.addr, x.b.key, x.b.addr, nets)
		}
	}
}

// overlap reports whether sockets bound to a and b (HOST:PORT) would take
// the same port on some address. Port 0 (the kernel picks) never overlaps.
// Go binds a wildcard host (empty, "0.0.0.0" or "::") to every address,
// IPv4 and IPv6 alike, and "localhost" to 127.0.0.1 alone.
func overlap(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil || pa != pb || pa == "0" {
		return false
	}
	x, okA := listenHost(ha)
	y, okB := listenHost(hb)
	return okA && okB && (x == y || x.IsUnspecified() || y.IsUnspecified())
}

func listenHost(host string) (netip.Addr, bool) {
	switch host {
	case "":
		return netip.IPv6Unspecified(), true
	case "localhost":
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), true
	}
	a, err := netip.ParseAddr(host)
	return a.Unmap(), err == nil
}

func inAnyZone(name string, zones []Zone) bool {

	for _, z := range zones {
		if strings.EqualFold(name, z.Origin) || strings.HasSuffix(strings.ToLower(name), "."+strings.ToLower(z.Origin)) {
			return true
		}
	}
	return false
}

func checkAddr(ps *Problems, key, addr string, listen bool) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		ps.add(key, "%q is not an address: want HOST:PORT, e.g. 127.0.0.1:8443", addr)
		return
	}
	if listen && host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			ps.add(key, "%q is not an IP address to listen on: want an IP such as 127.0.0.1 or ::1 (or empty for all)", host)
		}
	}
	var p int
	if _, err := fmt.Sscanf(port, "%d", &p); err != nil || p < 0 || p > 65535 || fmt.Sprint(p) != port {
		ps.add(key, "port %q is not a number between 0 and 65535", port)
	}
}

func checkIP(ps *Problems, key, s string, v4 bool) {
	if s == "" {
		return
	}
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		ps.add(key, "%q is not an IP address", s)
	case v4 && !a.Is4():
		ps.add(key, "%q is not an IPv4 address", s)
	case !v4 && !a.Is6():
		ps.add(key, "%q is not an IPv6 address", s)
	}
}

func checkFile(ps *Problems, key, path string, required bool) {
	if path == "" {
		if required {
			ps.add(key, "is required: the path of a PEM file")
		}
		return
	}
	f, err := os.Open(path)
	if err != nil {
		ps.add(key, "cannot read %q: %v", path, unwrapPathError(err))
		return
	}
	f.Close()
}

func checkSecret(ps *Problems, key string, s Secret, required bool) {
	if s.IsZero() {
		if required {
			ps.add(key, "is required: give it inline, as {file: PATH} or as {env: NAME}")
		}
		return
	}
	if s.File != "" {
		checkFile(ps, key+".file", s.File, true)
		return
	}
	if s.Env != "" {
		if _, ok := os.LookupEnv(s.Env); !ok {
			ps.add(key+".env", "environment variable %s is not set", s.Env)
		}
	}
}

// checkNotBlank reports a secret that is set but resolves to nothing (an
// empty file or variable): a blank token must never mean "no token".
func checkNotBlank(ps *Problems, key string, s Secret) {
	if s.IsZero() {
		return
	}
	if v, err := s.Resolve(); err == nil && strings.TrimSpace(v) == "" {
		ps.add(key, "is empty: a blank token would leave what it guards open")
	}
}

func checkNamespacePattern(ps *Problems, key, p string) {
	if p == "*" {
		return
	}
	db, coll, ok := strings.Cut(p, ".")
	if !ok || db == "" || coll == "" || strings.ContainsAny(db, "*$ /\\\"") {
		ps.add(key, "%q is not a namespace pattern: want *, DB.* or DB.COLLECTION", p)
	}
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func validateArchive(ps *Problems, a *MongoArchive) {
	if a.SegmentBytes < 64<<10 || a.SegmentBytes > 1<<30 {
		ps.add("mongo.archive.segment_bytes", "%d is out of range: want 64KiB to 1GiB, e.g. 16MiB", int64(a.SegmentBytes))
	}
	if a.SegmentInterval < 100*time.Millisecond {
		ps.add("mongo.archive.segment_interval", "%v is too short: want at least 100ms, e.g. 10s", a.SegmentInterval)
	}
	if a.BaseInterval < time.Minute {
		ps.add("mongo.archive.base_interval", "%v is too short: want at least 1m, e.g. 24h", a.BaseInterval)
	}
	if a.Retention < 0 {
		ps.add("mongo.archive.retention", "must not be negative: want e.g. 720h (0: never delete)")
	} else if a.Retention > 0 && a.Retention < a.BaseInterval {
		ps.add("mongo.archive.retention", "%v is shorter than mongo.archive.base_interval (%v): want at least that, e.g. 720h", a.Retention, a.BaseInterval)
	}
	if a.Target == "" {
		return
	}
	if rest, ok := strings.CutPrefix(a.Target, "s3://"); ok {
		if b, _, _ := strings.Cut(rest, "/"); b == "" {
			ps.add("mongo.archive.target", "%q names no bucket: want s3://BUCKET/PREFIX or a folder", a.Target)
		}
	} else if strings.Contains(a.Target, "://") {
		ps.add("mongo.archive.target", "%q: want a folder or s3://BUCKET/PREFIX", a.Target)
	}
	if a.S3.Endpoint != "" {
		if u, err := url.Parse(a.S3.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			ps.add("mongo.archive.s3.endpoint", "%q is not an http(s) URL", a.S3.Endpoint)
		}
	}
	checkSecret(ps, "mongo.archive.s3.access_key_id", a.S3.AccessKeyID, false)
	checkSecret(ps, "mongo.archive.s3.secret_access_key", a.S3.SecretAccessKey, !a.S3.AccessKeyID.IsZero())
}
