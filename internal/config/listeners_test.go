package config

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/edgenode/edgenode/internal/testkit"
)

// TestListenerClashes: two listeners of one protocol on one address are
// reported with both keys; a TCP and a UDP listener may share a port. The
// validator's verdict is checked against the kernel's: the two parts'
// sockets are really bound, the way the node binds them.
func TestListenerClashes(t *testing.T) {
	port := freePortOnBoth(t)
	at := func(host string) string { return net.JoinHostPort(host, fmt.Sprint(port)) }
	set := map[string]func(c *Config, addr string){
		"https.listen":     func(c *Config, a string) { c.HTTPS.Listen = a },
		"admin.listen":     func(c *Config, a string) { c.Admin.Listen = a },
		"dns.listen":       func(c *Config, a string) { c.DNS.Listen = a },
		"mongo.listen":     func(c *Config, a string) { c.Mongo.Listen = a },
		"mesh.bind":        func(c *Config, a string) { c.Mesh.Bind = a },
		"mesh.link_listen": func(c *Config, a string) { c.Mesh.LinkListen = a },
	}
	for _, tc := range []struct {
		a, b         string // keys; b is the one reported
		addrA, addrB string
		http3        bool
		want         string // "" for no problem
		kernel       bool   // bind the sockets to check the verdict
	}{
		{"https.listen", "admin.listen", at("127.0.0.1"), at("127.0.0.1"), true, "is already used by https.listen (tcp)", true},
		{"mesh.bind", "mesh.link_listen", at("127.0.0.1"), at("127.0.0.1"), true, "is already used by mesh.bind (udp)", true},
		{"dns.listen", "mesh.link_listen", at("127.0.0.1"), at("127.0.0.1"), true, "is already used by dns.listen (udp)", true},
		{"https.listen", "mesh.link_listen", at("127.0.0.1"), at("127.0.0.1"), true, "is already used by https.listen (udp)", true},
		{"https.listen", "mesh.link_listen", at("127.0.0.1"), at("127.0.0.1"), false, "", true},
		{"admin.listen", "mesh.link_listen", at("127.0.0.1"), at("127.0.0.1"), true, "", true},
		{"mongo.listen", "mesh.link_listen", at("127.0.0.1"), at("127.0.0.1"), true, "", true},
		{"dns.listen", "mesh.bind", at("127.0.0.1"), at("127.0.0.1"), true, "is already used by dns.listen (udp and tcp)", true},
		{"https.listen", "dns.listen", at("127.0.0.1"), at("127.0.0.1"), true, "is already used by https.listen (udp and tcp)", true},
		{"https.listen", "dns.listen", at("127.0.0.1"), at("127.0.0.1"), false, "is already used by https.listen (tcp)", true},
		{"dns.listen", "mongo.listen", at("127.0.0.1"), at("127.0.0.1"), true, "is already used by dns.listen (tcp)", true},
		{"admin.listen", "mongo.listen", at("127.0.0.1"), at("127.0.0.2"), true, "", true},
		// Wildcards are not bound here: the test stays on loopback.
		{"https.listen", "admin.listen", at(""), at("127.0.0.1"), true, "overlaps https.listen " + at("") + " (tcp)", false},
		{"mesh.bind", "mesh.link_listen", at("0.0.0.0"), at("::1"), true, "overlaps mesh.bind", false},
		{"https.listen", "admin.listen", "127.0.0.1:0", "127.0.0.1:0", true, "", false},
	} {
		name := fmt.Sprintf("%s=%s,%s=%s,http3=%v", tc.a, tc.addrA, tc.b, tc.addrB, tc.http3)
		t.Run(name, func(t *testing.T) {
			c := Default()
			c.Mesh.Enabled = true
			c.HTTPS.HTTP3 = tc.http3
			set[tc.a](&c, tc.addrA)
			set[tc.b](&c, tc.addrB)
			var ps Problems
			c.validateListeners(&ps)
			got := ps.Error()
			switch {
			case tc.want == "" && len(ps.List) > 0:
				t.Errorf("want no problem, got %s", got)
			case tc.want != "" && (len(ps.List) != 1 || !strings.Contains(got, tc.b+": "+tc.addrB+" "+tc.want)):
				t.Errorf("want %q naming %s, got %s", tc.want, tc.b, got)
			}
			if !tc.kernel {
				return
			}
			var socks []func() error
			defer func() {
				for _, cl := range socks {
					cl()
				}
			}()
			bind := func(key string) error {
				for _, l := range c.listeners() {
					if l.key != key {
						continue
					}
					cl, err := bindLike(l)
					if err != nil {
						return err
					}
					socks = append(socks, cl)
				}
				return nil
			}
			if err := bind(tc.a); err != nil {
				t.Skipf("port %d taken meanwhile: %v", port, err)
			}
			err := bind(tc.b)
			if (err != nil) != (tc.want != "") {
				t.Errorf("the kernel disagrees: binding %s after %s: %v", tc.b, tc.a, err)
			}
		})
	}
}

// bindLike binds l as the node's parts do: net.Listen for TCP,
// net.ListenPacket for UDP (memberlist, QUIC and HTTP/3 alike).
func bindLike(l listener) (func() error, error) {
	if l.network == "udp" {
		c, err := net.ListenPacket("udp", l.addr)
		if err != nil {
			return nil, err
		}
		return c.Close, nil
	}
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return nil, err
	}
	return ln.Close, nil
}

// freePortOnBoth is a port free for TCP and UDP on 127.0.0.1 (the test kit's,
// never handed out twice) that is also free on 127.0.0.2.
func freePortOnBoth(t *testing.T) int {
	t.Helper()
	for range 20 {
		port := testkit.FreeUDPTCPPort(t, "127.0.0.1")
		ok := true
		for _, a := range []string{"127.0.0.2"} {
			for _, nw := range []string{"tcp", "udp"} {
				cl, err := bindLike(listener{network: nw, addr: net.JoinHostPort(a, fmt.Sprint(port))})
				if err != nil {
					ok = false
					continue
				}
				cl()
			}
		}
		if ok {
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}
