package node

import (
	"net"
	"net/netip"

	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"

	"github.com/edgenode/edgenode/internal/config"
)

// exposureWarnings names the listeners that anyone off this machine may
// reach without authenticating. None is an error (a private network or a
// firewall may be the protection), but an operator must hear about it at
// every start rather than find out from an intruder.
func exposureWarnings(cfg *config.Config) []exposure {
	var out []exposure
	if !loopbackOnly(cfg.Admin.Listen) {
		out = append(out, exposure{key: "admin.listen", addr: cfg.Admin.Listen,
			what: "/metrics, /status.json, /healthz and /readyz answer without authentication (the /v1/ routes and /debug/pprof/ need the admin token); keep it on loopback or a private network, or firewall it"})
	}
	if cfg.Mongo.Enabled && !loopbackOnly(cfg.Mongo.Listen) && !mongoAuthenticates(cfg.Mongo.Upstream) {
		out = append(out, exposure{key: "mongo.listen", addr: cfg.Mongo.Listen,
			what: "the upstream database needs no credentials, so anyone who reaches this port can read and write every replicated collection; keep it on loopback, or give mongo.upstream a URI with credentials"})
	}
	return out
}

type exposure struct{ key, addr, what string }

// loopbackOnly: the address binds to loopback only. An empty host or an
// unspecified address (0.0.0.0, ::) binds to every interface.
func loopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// mongoAuthenticates: the upstream URI carries credentials, so the database
// (and the proxy in front of it) demands authentication. The embedded
// database (no URI) never does.
func mongoAuthenticates(upstream config.Secret) bool {
	if upstream.IsZero() {
		return false
	}
	uri, err := upstream.Resolve()
	if err != nil || uri == "" {
		return false
	}
	cs, err := connstring.Parse(uri)
	return err == nil && (cs.Username != "" || cs.AuthMechanism != "")
}
